//! Errors of the signalling layer, and how they become TRTC errors.

use rtcroom_protocol::{ErrorCode, RtcError};

/// Why a signalling request did not get a successful reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The WebSocket could not be opened. Retryable (the server may be restarting).
    #[error("cannot reach the signalling server: {0}")]
    Connect(String),
    /// No reply within the request's timeout; carries TRTC's timeout error for the request
    /// kind. Retryable.
    #[error("{0}")]
    Timeout(RtcError),
    /// The server answered with an error (its TRTC code and extra code). Not retryable as is:
    /// the request must change.
    #[error("{0}")]
    Rejected(RtcError),
    /// The connection went away before the reply. Retryable on a new connection.
    #[error("the signalling connection was lost before the reply")]
    Lost,
}

impl SignalError {
    /// The error a user sees when this ends a join: timeouts keep TRTC's
    /// JOIN_ROOM_FAILED "join room timeout", the server's refusals keep its codes, and
    /// connection failures are JOIN_ROOM_FAILED with the cause.
    pub fn into_join_error(self) -> RtcError {
        match self {
            SignalError::Timeout(e) | SignalError::Rejected(e) => e,
            SignalError::Connect(why) => RtcError::new(
                ErrorCode::JoinRoomFailed,
                format!("cannot reach the signalling server: {why}"),
            ),
            SignalError::Lost => RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the signalling connection was lost during the join",
            ),
        }
    }

    /// The error a user sees when this ends another request; `lost` is the code to use when
    /// the connection dropped (e.g. SWITCH_ROLE_FAILED for switch-role).
    pub fn into_rtc_error(self, lost: ErrorCode) -> RtcError {
        match self {
            SignalError::Timeout(e) | SignalError::Rejected(e) => e,
            SignalError::Connect(why) => RtcError::new(lost, why),
            SignalError::Lost => RtcError::new(lost, "the signalling connection was lost"),
        }
    }

    /// Whether a new attempt may succeed without changing the request: everything but
    /// refusals that only a new UserSig, PrivateMapKey or parameter can fix (account errors
    /// 0x4001, INVALID_PARAMETER, missing permissions, the room's other mode). A full room or
    /// a server that is stopping ("JOIN_ROOM_FAILED" without an extra code) may be retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            SignalError::Rejected(e) => !is_permanent_refusal(e),
            _ => true,
        }
    }
}

/// A join refusal that repeating the same join cannot change.
pub fn is_permanent_refusal(e: &RtcError) -> bool {
    use rtcroom_protocol::error::extra;
    match e.code {
        ErrorCode::SignalChannelSetupFailed | ErrorCode::InvalidParameter => true,
        ErrorCode::JoinRoomFailed => matches!(
            e.extra_code,
            Some(
                extra::PRIVILEGE_FLAG_ERROR
                    | extra::NO_PERMISSION_CREATE_ROOM
                    | extra::NO_PERMISSION_ENTER_ROOM
                    | extra::BAD_SCENE_OR_ROLE
            )
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_errors_keep_trtc_codes() {
        let refused = RtcError::with_extra(ErrorCode::JoinRoomFailed, -102052, "full");
        assert_eq!(
            SignalError::Rejected(refused.clone()).into_join_error(),
            refused
        );
        // A full room may have space on the next attempt; a bad key never works.
        assert!(SignalError::Rejected(refused).is_retryable());
        let stopping = RtcError::new(ErrorCode::JoinRoomFailed, "the server is stopping");
        assert!(SignalError::Rejected(stopping).is_retryable());
        for permanent in [
            RtcError::with_extra(ErrorCode::SignalChannelSetupFailed, 70001, "expired"),
            RtcError::with_extra(ErrorCode::InvalidParameter, 5013, "room"),
            RtcError::with_extra(ErrorCode::JoinRoomFailed, -102011, "no enter bit"),
            RtcError::with_extra(ErrorCode::JoinRoomFailed, -100011, "other mode"),
        ] {
            assert!(!SignalError::Rejected(permanent).is_retryable());
        }
        let t = crate::requests::RequestKind::Join.timeout_error();
        assert_eq!(SignalError::Timeout(t.clone()).into_join_error(), t);
        for e in [SignalError::Connect("refused".into()), SignalError::Lost] {
            assert!(e.is_retryable());
            assert_eq!(e.into_join_error().code, ErrorCode::JoinRoomFailed);
        }
        assert_eq!(
            SignalError::Lost
                .into_rtc_error(ErrorCode::SwitchRoleFailed)
                .code,
            ErrorCode::SwitchRoleFailed
        );
    }
}
