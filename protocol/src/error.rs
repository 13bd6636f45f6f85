//! TRTC error codes (Web SDK v4 `TRTC.ERROR_CODE`) and the one error type that carries them.
//!
//! Every failure a user of rtcroom can see, client or server side, is an [`RtcError`]: a
//! [`ErrorCode`] (TRTC v4's numeric code, e.g. `INVALID_PARAMETER` 0x1000), an optional
//! `extra_code` (the server or account code TRTC reports beside it, e.g. 70001 for an expired
//! UserSig or -102052 for a full room) and a message that names what was wrong.

use std::fmt;

use serde::{Deserialize, Serialize};

/// TRTC Web SDK v4 error codes (reference §3.1). The numeric values are TRTC's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0x1000: a parameter has the wrong type, range or characters.
    InvalidParameter,
    /// 0x1001: the call is not allowed in the current state (publish before join, ...).
    InvalidOperation,
    /// 0x1002: the platform lacks a needed capability.
    NotSupported,
    /// 0x1003: no capture device found.
    DeviceNotFound,
    /// 0x1004: a local stream could not be initialised.
    InitializeFailed,
    /// 0x4001: account errors (UserSig, sdkAppId); the account code is in `extra_code`.
    SignalChannelSetupFailed,
    /// 0x4002: signalling channel error (deprecated in TRTC 4.6.5, kept for completeness).
    SignalChannelError,
    /// 0x4003: ICE transport error (deprecated in TRTC 4.6.6, kept for completeness).
    IceTransportError,
    /// 0x4004: the join failed; the server's code is in `extra_code` (also the 5 s timeout).
    JoinRoomFailed,
    /// 0x4005: creating an SDP offer failed.
    CreateOfferFailed,
    /// 0x4006: the signalling channel could not be re-established.
    SignalChannelReconnectionFailed,
    /// 0x4007: the uplink peer connection could not be re-established.
    UplinkReconnectionFailed,
    /// 0x4008: the downlink peer connection could not be re-established.
    DownlinkReconnectionFailed,
    /// 0x4010: the remote stream went away during subscribe.
    RemoteStreamNotExist,
    /// 0x4040: the client was removed from the room.
    ClientBanned,
    /// 0x4041: the media transmission service timed out.
    ServerTimeout,
    /// 0x4042: a subscription timed out.
    SubscriptionTimeout,
    /// 0x4043: autoplay was refused.
    PlayNotAllowed,
    /// 0x4044: a capture device could not be recovered.
    DeviceAutoRecoverFailed,
    /// 0x4045: starting a CDN relay failed.
    StartPublishCdnFailed,
    /// 0x4046: stopping a CDN relay failed.
    StopPublishCdnFailed,
    /// 0x4047: starting a mix transcode failed.
    StartMixTranscodeFailed,
    /// 0x4048: stopping a mix transcode failed.
    StopMixTranscodeFailed,
    /// 0x4049: H.264 is not supported.
    NotSupportedH264,
    /// 0x404a: switching role failed.
    SwitchRoleFailed,
    /// 0x404b: an API call timed out.
    ApiCallTimeout,
    /// 0xffff: anything else.
    Unknown,
}

impl ErrorCode {
    /// Every code, for tables and round-trip tests.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::InvalidParameter,
        ErrorCode::InvalidOperation,
        ErrorCode::NotSupported,
        ErrorCode::DeviceNotFound,
        ErrorCode::InitializeFailed,
        ErrorCode::SignalChannelSetupFailed,
        ErrorCode::SignalChannelError,
        ErrorCode::IceTransportError,
        ErrorCode::JoinRoomFailed,
        ErrorCode::CreateOfferFailed,
        ErrorCode::SignalChannelReconnectionFailed,
        ErrorCode::UplinkReconnectionFailed,
        ErrorCode::DownlinkReconnectionFailed,
        ErrorCode::RemoteStreamNotExist,
        ErrorCode::ClientBanned,
        ErrorCode::ServerTimeout,
        ErrorCode::SubscriptionTimeout,
        ErrorCode::PlayNotAllowed,
        ErrorCode::DeviceAutoRecoverFailed,
        ErrorCode::StartPublishCdnFailed,
        ErrorCode::StopPublishCdnFailed,
        ErrorCode::StartMixTranscodeFailed,
        ErrorCode::StopMixTranscodeFailed,
        ErrorCode::NotSupportedH264,
        ErrorCode::SwitchRoleFailed,
        ErrorCode::ApiCallTimeout,
        ErrorCode::Unknown,
    ];

    /// TRTC's numeric value (e.g. 0x1000 = 4096).
    pub const fn value(self) -> u32 {
        match self {
            ErrorCode::InvalidParameter => 0x1000,
            ErrorCode::InvalidOperation => 0x1001,
            ErrorCode::NotSupported => 0x1002,
            ErrorCode::DeviceNotFound => 0x1003,
            ErrorCode::InitializeFailed => 0x1004,
            ErrorCode::SignalChannelSetupFailed => 0x4001,
            ErrorCode::SignalChannelError => 0x4002,
            ErrorCode::IceTransportError => 0x4003,
            ErrorCode::JoinRoomFailed => 0x4004,
            ErrorCode::CreateOfferFailed => 0x4005,
            ErrorCode::SignalChannelReconnectionFailed => 0x4006,
            ErrorCode::UplinkReconnectionFailed => 0x4007,
            ErrorCode::DownlinkReconnectionFailed => 0x4008,
            ErrorCode::RemoteStreamNotExist => 0x4010,
            ErrorCode::ClientBanned => 0x4040,
            ErrorCode::ServerTimeout => 0x4041,
            ErrorCode::SubscriptionTimeout => 0x4042,
            ErrorCode::PlayNotAllowed => 0x4043,
            ErrorCode::DeviceAutoRecoverFailed => 0x4044,
            ErrorCode::StartPublishCdnFailed => 0x4045,
            ErrorCode::StopPublishCdnFailed => 0x4046,
            ErrorCode::StartMixTranscodeFailed => 0x4047,
            ErrorCode::StopMixTranscodeFailed => 0x4048,
            ErrorCode::NotSupportedH264 => 0x4049,
            ErrorCode::SwitchRoleFailed => 0x404a,
            ErrorCode::ApiCallTimeout => 0x404b,
            ErrorCode::Unknown => 0xffff,
        }
    }

    /// TRTC's constant name (e.g. `INVALID_PARAMETER`).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidParameter => "INVALID_PARAMETER",
            ErrorCode::InvalidOperation => "INVALID_OPERATION",
            ErrorCode::NotSupported => "NOT_SUPPORTED",
            ErrorCode::DeviceNotFound => "DEVICE_NOT_FOUND",
            ErrorCode::InitializeFailed => "INITIALIZE_FAILED",
            ErrorCode::SignalChannelSetupFailed => "SIGNAL_CHANNEL_SETUP_FAILED",
            ErrorCode::SignalChannelError => "SIGNAL_CHANNEL_ERROR",
            ErrorCode::IceTransportError => "ICE_TRANSPORT_ERROR",
            ErrorCode::JoinRoomFailed => "JOIN_ROOM_FAILED",
            ErrorCode::CreateOfferFailed => "CREATE_OFFER_FAILED",
            ErrorCode::SignalChannelReconnectionFailed => "SIGNAL_CHANNEL_RECONNECTION_FAILED",
            ErrorCode::UplinkReconnectionFailed => "UPLINK_RECONNECTION_FAILED",
            ErrorCode::DownlinkReconnectionFailed => "DOWNLINK_RECONNECTION_FAILED",
            ErrorCode::RemoteStreamNotExist => "REMOTE_STREAM_NOT_EXIST",
            ErrorCode::ClientBanned => "CLIENT_BANNED",
            ErrorCode::ServerTimeout => "SERVER_TIMEOUT",
            ErrorCode::SubscriptionTimeout => "SUBSCRIPTION_TIMEOUT",
            ErrorCode::PlayNotAllowed => "PLAY_NOT_ALLOWED",
            ErrorCode::DeviceAutoRecoverFailed => "DEVICE_AUTO_RECOVER_FAILED",
            ErrorCode::StartPublishCdnFailed => "START_PUBLISH_CDN_FAILED",
            ErrorCode::StopPublishCdnFailed => "STOP_PUBLISH_CDN_FAILED",
            ErrorCode::StartMixTranscodeFailed => "START_MIX_TRANSCODE_FAILED",
            ErrorCode::StopMixTranscodeFailed => "STOP_MIX_TRANSCODE_FAILED",
            ErrorCode::NotSupportedH264 => "NOT_SUPPORTED_H264",
            ErrorCode::SwitchRoleFailed => "SWITCH_ROLE_FAILED",
            ErrorCode::ApiCallTimeout => "API_CALL_TIMEOUT",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The code for a numeric value, if TRTC defines one.
    pub fn from_value(value: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.value() == value)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04x})", self.name(), self.value())
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.value()
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        ErrorCode::from_value(value).ok_or_else(|| format!("unknown TRTC error code {value:#x}"))
    }
}

/// Server and account codes that TRTC reports in `extra_code` (reference §3.1, §3.2).
///
/// Kept as plain constants: the space is open (TRTC adds codes), so an enum would have to lose
/// information for codes it does not know.
pub mod extra {
    /// UserSig expired.
    pub const SIG_EXPIRED: i32 = 70001;
    /// UserSig has length 0.
    pub const SIG_EMPTY: i32 = 70002;
    /// UserSig is malformed (bad encoding, bad JSON, missing field).
    pub const SIG_MALFORMED: i32 = 70003;
    /// UserSig is truncated (the compressed body does not inflate).
    pub const SIG_TRUNCATED: i32 = 70004;
    /// UserSig was signed with another key (or another app's key).
    pub const SIG_KEY_MISMATCH: i32 = 70009;
    /// UserSig identifier does not match the userId.
    pub const SIG_IDENTIFIER_MISMATCH: i32 = 70013;
    /// UserSig sdkAppId does not match.
    pub const SIG_SDKAPPID_MISMATCH: i32 = 70014;
    /// sdkAppId not found on this server.
    pub const SDKAPPID_NOT_FOUND: i32 = 70020;
    /// PrivateMapKey privilege bit check failed.
    pub const PRIVILEGE_FLAG_ERROR: i32 = -100006;
    /// Bad room number.
    pub const BAD_ROOM_NUMBER: i32 = -100010;
    /// Bad scene or role.
    pub const BAD_SCENE_OR_ROLE: i32 = -100011;
    /// Invalid characters in a string room id.
    pub const BAD_STR_ROOM_CHARS: i32 = -100014;
    /// UserSig verification failed (generic).
    pub const USERSIG_VERIFY_FAILED: i32 = -100018;
    /// Room does not exist.
    pub const ROOM_NOT_EXIST: i32 = -102005;
    /// No permission to create the room.
    pub const NO_PERMISSION_CREATE_ROOM: i32 = -102010;
    /// No permission to enter the room.
    pub const NO_PERMISSION_ENTER_ROOM: i32 = -102011;
    /// No permission to push video.
    pub const NO_PERMISSION_PUSH_VIDEO: i32 = -102013;
    /// No sub-stream (screen) privilege.
    pub const NO_PERMISSION_SUB_STREAM: i32 = -102015;
    /// Room full.
    pub const ROOM_FULL: i32 = -102052;
    /// Undefined role.
    pub const UNDEFINED_ROLE: i32 = -102055;

    /// v5 parameter extra codes, used for client-side validation failures.
    /// Required parameter missing.
    pub const PARAM_REQUIRED: i32 = 5001;
    /// Parameter has the wrong type.
    pub const PARAM_TYPE: i32 = 5002;
    /// Parameter is empty.
    pub const PARAM_EMPTY: i32 = 5003;
    /// Parameter out of range.
    pub const PARAM_RANGE: i32 = 5005;
    /// Parameter longer than allowed.
    pub const PARAM_MAX: i32 = 5008;
    /// strRoomId has invalid characters or length.
    pub const STR_ROOM_ID_INVALID: i32 = 5012;
    /// numeric roomId is not in [1, 4294967294].
    pub const ROOM_ID_RANGE: i32 = 5013;
    /// roomId was passed as a string while useStringRoomId is off.
    pub const ROOM_ID_AS_STRING: i32 = 5016;
    /// An empty buffer.
    pub const EMPTY_BUFFER: i32 = 5017;
    /// A buffer over its size limit.
    pub const BUFFER_OVERSIZE: i32 = 5018;
    /// roomId type does not match useStringRoomId.
    pub const ROOM_ID_TYPE_MISMATCH: i32 = 5019;

    /// v5 invalid-operation extra codes.
    /// Not in a room.
    pub const NOT_ENTERED_ROOM: i32 = 5101;
    /// Repeated call.
    pub const REPEATED_CALL: i32 = 5104;
    /// Audience role may not do this.
    pub const AUDIENCE_ROLE: i32 = 5107;
}

/// The error every rtcroom layer ends in: TRTC's code, the server/extra code, and a message.
///
/// Match on [`code`](Self::code) (a `#[non_exhaustive]` [`ErrorCode`]) and
/// [`extra_code`](Self::extra_code); [`is_retryable`](Self::is_retryable) says whether the
/// same call may succeed later unchanged. Built with the constructors below (the struct is
/// `#[non_exhaustive]`, so fields can be added).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
#[error("{code}{}: {message}", extra_code.map(|c| format!(" [extra {c}]")).unwrap_or_default())]
pub struct RtcError {
    /// TRTC's error code.
    pub code: ErrorCode,
    /// The server or account code TRTC reports with it, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "extraCode")]
    pub extra_code: Option<i32>,
    /// What went wrong, naming the field or the rule.
    pub message: String,
}

impl RtcError {
    /// A new error with no extra code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RtcError {
            code,
            extra_code: None,
            message: message.into(),
        }
    }

    /// A new error with an extra code.
    pub fn with_extra(code: ErrorCode, extra_code: i32, message: impl Into<String>) -> Self {
        RtcError {
            code,
            extra_code: Some(extra_code),
            message: message.into(),
        }
    }

    /// `INVALID_PARAMETER` with an extra code.
    pub fn invalid_parameter(extra_code: Option<i32>, message: impl Into<String>) -> Self {
        RtcError {
            code: ErrorCode::InvalidParameter,
            extra_code,
            message: message.into(),
        }
    }

    /// `INVALID_OPERATION` with an extra code.
    pub fn invalid_operation(extra_code: Option<i32>, message: impl Into<String>) -> Self {
        RtcError {
            code: ErrorCode::InvalidOperation,
            extra_code,
            message: message.into(),
        }
    }

    /// TRTC's error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// TRTC's numeric error code (e.g. 0x4004 = 16388 for JOIN_ROOM_FAILED).
    pub fn trtc_code(&self) -> u32 {
        self.code.value()
    }

    /// The server or account code TRTC reports beside it (e.g. 70001 expired UserSig,
    /// -102052 room full, 5104 repeated call).
    pub fn extra_code(&self) -> Option<i32> {
        self.extra_code
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same call, unchanged, may succeed later: timeouts, lost or failed
    /// connections, an overloaded server, a full room. Not: bad parameters, calls in the
    /// wrong state, credentials, permissions, a removed client, a stream that is gone, a
    /// missing capability (each needs the caller to change something first).
    pub fn is_retryable(&self) -> bool {
        match self.code {
            ErrorCode::JoinRoomFailed => match self.extra_code {
                // The join timed out or its connection failed.
                None => true,
                Some(c) => c == extra::ROOM_FULL,
            },
            ErrorCode::SignalChannelError
            | ErrorCode::IceTransportError
            | ErrorCode::SignalChannelReconnectionFailed
            | ErrorCode::UplinkReconnectionFailed
            | ErrorCode::DownlinkReconnectionFailed
            | ErrorCode::ServerTimeout
            | ErrorCode::SubscriptionTimeout
            | ErrorCode::ApiCallTimeout => true,
            _ => false,
        }
    }
}

/// Result alias for rtcroom operations.
pub type RtcResult<T> = Result<T, RtcError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let e = |code, extra: Option<i32>| RtcError {
            code,
            extra_code: extra,
            message: String::new(),
        };
        // A join that timed out, or hit a full room, may work later as it is.
        assert!(e(ErrorCode::JoinRoomFailed, None).is_retryable());
        assert!(e(ErrorCode::JoinRoomFailed, Some(extra::ROOM_FULL)).is_retryable());
        // Refused for a reason the caller must fix: not.
        assert!(
            !e(
                ErrorCode::JoinRoomFailed,
                Some(extra::NO_PERMISSION_ENTER_ROOM)
            )
            .is_retryable()
        );
        assert!(
            !e(
                ErrorCode::SignalChannelSetupFailed,
                Some(extra::SIG_EXPIRED)
            )
            .is_retryable()
        );
        assert!(!e(ErrorCode::InvalidParameter, Some(extra::ROOM_ID_RANGE)).is_retryable());
        assert!(!e(ErrorCode::InvalidOperation, Some(extra::REPEATED_CALL)).is_retryable());
        assert!(!e(ErrorCode::ClientBanned, None).is_retryable());
        assert!(!e(ErrorCode::RemoteStreamNotExist, None).is_retryable());
        assert!(e(ErrorCode::SignalChannelReconnectionFailed, None).is_retryable());
        assert!(e(ErrorCode::ServerTimeout, None).is_retryable());
        assert!(!e(ErrorCode::Unknown, None).is_retryable());
        // Every code is classified one way or the other without panicking, and the accessors
        // read what was built.
        let x = RtcError::with_extra(ErrorCode::JoinRoomFailed, extra::ROOM_FULL, "full");
        assert_eq!(
            (x.code(), x.trtc_code(), x.extra_code(), x.message()),
            (ErrorCode::JoinRoomFailed, 0x4004, Some(-102052), "full")
        );
        let retryable = ErrorCode::ALL
            .iter()
            .filter(|c| e(**c, None).is_retryable())
            .count();
        assert_eq!(
            retryable, 9,
            "JOIN_ROOM_FAILED and the eight transient codes"
        );
    }

    #[test]
    fn values_are_trtcs() {
        assert_eq!(ErrorCode::InvalidParameter.value(), 4096);
        assert_eq!(ErrorCode::InvalidOperation.value(), 4097);
        assert_eq!(ErrorCode::JoinRoomFailed.value(), 16388);
        assert_eq!(ErrorCode::SignalChannelReconnectionFailed.value(), 16390);
        assert_eq!(ErrorCode::ClientBanned.value(), 16448);
        assert_eq!(ErrorCode::Unknown.value(), 0xffff);
    }

    #[test]
    fn values_and_names_are_unique_and_round_trip() {
        let mut values: Vec<u32> = ErrorCode::ALL.iter().map(|c| c.value()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_value(code.value()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, code.value().to_string());
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(ErrorCode::from_value(0x1234), None);
        assert!(serde_json::from_str::<ErrorCode>("4660").is_err());
    }

    #[test]
    fn display_names_code_and_extra() {
        let e = RtcError::with_extra(ErrorCode::SignalChannelSetupFailed, 70001, "expired");
        assert_eq!(
            e.to_string(),
            "SIGNAL_CHANNEL_SETUP_FAILED (0x4001) [extra 70001]: expired"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["code"], 0x4001);
        assert_eq!(json["extraCode"], 70001);
        let back: RtcError = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
