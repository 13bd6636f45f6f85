//! Validated identities: room ids, user ids, modes and roles, with TRTC's exact rules.
//!
//! Every constructor checks the rule and returns an [`RtcError`] with `INVALID_PARAMETER` and
//! the TRTC extra code (v5's parameter codes: 5012 bad string room, 5013 numeric room out of
//! range, 5016 room passed as a string, 5019 room type mismatch) and a message that names the
//! field and the rule.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{RtcError, RtcResult, extra};

/// Largest numeric room id TRTC accepts (`e < 4294967295`).
pub const MAX_NUMERIC_ROOM_ID: u32 = 4_294_967_294;
/// Longest string room id, in bytes.
pub const MAX_STR_ROOM_ID_LEN: usize = 64;
/// Longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 32;

/// A room: numeric (1..=4294967294) or string (1–64 bytes of TRTC's character set).
///
/// Numeric 123 and string "123" are different rooms; `RoomId` keeps them apart in `Eq`, `Hash`
/// and `Ord`. On the wire (outside the join request, which follows TRTC v4 and sends
/// `roomId` as a string plus `useStringRoomId`) a numeric room is a JSON number and a string
/// room is a JSON string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(RoomIdInner);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum RoomIdInner {
    Numeric(u32),
    Str(String),
}

/// Whether a byte may appear in a string room id.
///
/// TRTC's rule: `A-Z a-z 0-9`, space and `! # $ % & ( ) + - : ; < = . > ? @ [ ] ^ _ { } | ~ ,`.
/// The SDK's regex uses `\s`; the seed and the docs say "space", so only the ASCII space is
/// accepted (tabs and newlines in room ids are a trap for logs and file names).
pub fn is_str_room_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" !#$%&()+-:;<=.>?@[]^_{}|~,".contains(&b)
}

impl RoomId {
    /// A numeric room; 0 and 4294967295 are refused (extra code 5013).
    pub fn numeric(id: u32) -> RtcResult<RoomId> {
        if id == 0 || id > MAX_NUMERIC_ROOM_ID {
            return Err(RtcError::invalid_parameter(
                Some(extra::ROOM_ID_RANGE),
                format!("roomId must be an integer in [1, {MAX_NUMERIC_ROOM_ID}], got {id}"),
            ));
        }
        Ok(RoomId(RoomIdInner::Numeric(id)))
    }

    /// A string room (extra code 5012 when empty, too long or with a disallowed character).
    pub fn string(id: &str) -> RtcResult<RoomId> {
        if id.is_empty() {
            return Err(RtcError::invalid_parameter(
                Some(extra::STR_ROOM_ID_INVALID),
                "roomId (string) must not be empty",
            ));
        }
        if id.len() > MAX_STR_ROOM_ID_LEN {
            return Err(RtcError::invalid_parameter(
                Some(extra::STR_ROOM_ID_INVALID),
                format!(
                    "roomId (string) must be at most {MAX_STR_ROOM_ID_LEN} bytes, got {}",
                    id.len()
                ),
            ));
        }
        if let Some(bad) = id.bytes().position(|b| !is_str_room_id_byte(b)) {
            // Report the character, not the byte: the id may hold multi-byte UTF-8.
            let ch = id[bad..].chars().next().unwrap_or('?');
            return Err(RtcError::invalid_parameter(
                Some(extra::STR_ROOM_ID_INVALID),
                format!(
                    "roomId (string) may only hold A-Z a-z 0-9, space and !#$%&()+-:;<=.>?@[]^_{{}}|~, \
                     but has {ch:?} at byte {bad}"
                ),
            ));
        }
        Ok(RoomId(RoomIdInner::Str(id.to_owned())))
    }

    /// Parse a room id as TRTC v4 sends it on the wire: the text of the id plus the client's
    /// `useStringRoomId` flag.
    ///
    /// With the flag off the text must be a decimal integer without sign or leading zero
    /// (`/^[1-9]\d*$/`) below 4294967295 (extra code 5013); with it on, the string rule applies.
    pub fn parse(text: &str, use_string_room_id: bool) -> RtcResult<RoomId> {
        if use_string_room_id {
            return RoomId::string(text);
        }
        let well_formed = text.len() <= 10
            && text
                .as_bytes()
                .first()
                .is_some_and(|b| (b'1'..=b'9').contains(b))
            && text.bytes().all(|b| b.is_ascii_digit());
        let value = if well_formed {
            text.parse::<u64>().ok()
        } else {
            None
        };
        match value {
            Some(v) if v <= u64::from(MAX_NUMERIC_ROOM_ID) => {
                // The guard keeps v within u32.
                RoomId::numeric(v as u32)
            }
            _ => Err(RtcError::invalid_parameter(
                Some(extra::ROOM_ID_RANGE),
                format!(
                    "roomId must be an integer in [1, {MAX_NUMERIC_ROOM_ID}] (useStringRoomId is off), got {:?}",
                    truncate_for_message(text)
                ),
            )),
        }
    }

    /// Parse a room id given as a JSON value, the way the Web SDK's `join({roomId})` takes it:
    /// a number when `useStringRoomId` is off (a string then gives extra code 5016), a string
    /// when it is on (a number then gives 5019).
    pub fn from_json(value: &serde_json::Value, use_string_room_id: bool) -> RtcResult<RoomId> {
        match (value, use_string_room_id) {
            (serde_json::Value::String(s), true) => RoomId::string(s),
            (serde_json::Value::Number(n), false) => match n.as_u64() {
                Some(v) if v >= 1 && v <= u64::from(MAX_NUMERIC_ROOM_ID) => {
                    // The guard keeps v within u32.
                    RoomId::numeric(v as u32)
                }
                _ => Err(RtcError::invalid_parameter(
                    Some(extra::ROOM_ID_RANGE),
                    format!("roomId must be an integer in [1, {MAX_NUMERIC_ROOM_ID}], got {n}"),
                )),
            },
            (serde_json::Value::String(_), false) => Err(RtcError::invalid_parameter(
                Some(extra::ROOM_ID_AS_STRING),
                "roomId is a string but useStringRoomId is off; pass a number or set useStringRoomId",
            )),
            (serde_json::Value::Number(_), true) => Err(RtcError::invalid_parameter(
                Some(extra::ROOM_ID_TYPE_MISMATCH),
                "roomId is a number but useStringRoomId is on; pass a string",
            )),
            (serde_json::Value::Null, _) => Err(RtcError::invalid_parameter(
                Some(extra::PARAM_REQUIRED),
                "roomId is required",
            )),
            _ => Err(RtcError::invalid_parameter(
                Some(extra::PARAM_TYPE),
                "roomId must be a number or a string",
            )),
        }
    }

    /// The numeric id, for a numeric room.
    pub fn as_numeric(&self) -> Option<u32> {
        match &self.0 {
            RoomIdInner::Numeric(n) => Some(*n),
            RoomIdInner::Str(_) => None,
        }
    }

    /// The string id, for a string room.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            RoomIdInner::Numeric(_) => None,
            RoomIdInner::Str(s) => Some(s),
        }
    }

    /// Whether this is a string room.
    pub fn is_string(&self) -> bool {
        matches!(self.0, RoomIdInner::Str(_))
    }

    /// The id as TRTC v4 puts it on the wire: its text (decimal for numeric rooms).
    pub fn wire_text(&self) -> String {
        match &self.0 {
            RoomIdInner::Numeric(n) => n.to_string(),
            RoomIdInner::Str(s) => s.clone(),
        }
    }
}

fn truncate_for_message(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

impl fmt::Display for RoomId {
    /// Numeric rooms print as the number, string rooms quoted, so 123 and "123" differ in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RoomIdInner::Numeric(n) => write!(f, "{n}"),
            RoomIdInner::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for RoomId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            RoomIdInner::Numeric(n) => serializer.serialize_u32(*n),
            RoomIdInner::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Num(n) => u32::try_from(n)
                .map_err(|_| serde::de::Error::custom("roomId out of range"))
                .and_then(|n| RoomId::numeric(n).map_err(serde::de::Error::custom)),
            Raw::Str(s) => RoomId::string(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A user id: 1–32 bytes of `A-Z a-z 0-9 _ -` (the seed's rule).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Validate a user id.
    pub fn new(id: &str) -> RtcResult<UserId> {
        if id.is_empty() {
            return Err(RtcError::invalid_parameter(
                Some(extra::PARAM_EMPTY),
                "userId must not be empty",
            ));
        }
        if id.len() > MAX_USER_ID_LEN {
            return Err(RtcError::invalid_parameter(
                Some(extra::PARAM_MAX),
                format!(
                    "userId must be at most {MAX_USER_ID_LEN} bytes, got {}",
                    id.len()
                ),
            ));
        }
        if let Some(bad) = id
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            let ch = id[bad..].chars().next().unwrap_or('?');
            return Err(RtcError::invalid_parameter(
                None,
                format!("userId may only hold A-Z a-z 0-9 _ - but has {ch:?} at byte {bad}"),
            ));
        }
        Ok(UserId(id.to_owned()))
    }

    /// An id no client can use (it starts with `~`, outside the userId alphabet), for
    /// members the server makes itself: a cluster node's link into a room it cascades.
    #[doc(hidden)]
    pub fn reserved(name: &str) -> UserId {
        UserId(format!("~{name}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        UserId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for UserId {
    type Err = RtcError;
    fn from_str(s: &str) -> RtcResult<UserId> {
        UserId::new(s)
    }
}

/// The room's scene: `rtc` (calls and meetings, ≤ 300 members) or `live` (anchors and audience).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Real-time call / meeting: every member may publish.
    Rtc,
    /// Interactive live streaming: anchors publish, audience watch.
    Live,
}

impl Mode {
    /// TRTC's `trtcScene` number on the wire (1 rtc, 2 live).
    pub const fn scene(self) -> u8 {
        match self {
            Mode::Rtc => 1,
            Mode::Live => 2,
        }
    }

    /// The mode's name (`rtc` / `live`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Rtc => "rtc",
            Mode::Live => "live",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = RtcError;
    fn from_str(s: &str) -> RtcResult<Mode> {
        match s {
            "rtc" => Ok(Mode::Rtc),
            "live" => Ok(Mode::Live),
            _ => Err(RtcError::invalid_parameter(
                Some(extra::PARAM_TYPE),
                format!(
                    "mode must be 'rtc' or 'live', got {:?}",
                    truncate_for_message(s)
                ),
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's role. It matters only in live mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May publish.
    Anchor,
    /// Watches only, and is not announced to other members.
    Audience,
}

impl Role {
    /// The role a join ends up with: in rtc mode every member is an anchor (the role is
    /// ignored); in live mode a join without a role is an audience member (the seed's table).
    pub fn effective(mode: Mode, requested: Option<Role>) -> Role {
        match mode {
            Mode::Rtc => Role::Anchor,
            Mode::Live => requested.unwrap_or(Role::Audience),
        }
    }

    /// TRTC's `trtcRole` number (20 anchor, 21 audience), also used in webhooks.
    pub const fn trtc_role(self) -> u8 {
        match self {
            Role::Anchor => 20,
            Role::Audience => 21,
        }
    }

    /// The role's name (`anchor` / `audience`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Anchor => "anchor",
            Role::Audience => "audience",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = RtcError;
    fn from_str(s: &str) -> RtcResult<Role> {
        match s {
            "anchor" => Ok(Role::Anchor),
            "audience" => Ok(Role::Audience),
            _ => Err(RtcError::invalid_parameter(
                Some(extra::UNDEFINED_ROLE),
                format!(
                    "role must be 'anchor' or 'audience', got {:?}",
                    truncate_for_message(s)
                ),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn extra_of<T: fmt::Debug>(r: RtcResult<T>) -> Option<i32> {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter);
        e.extra_code
    }

    #[test]
    fn numeric_room_bounds() {
        assert_eq!(RoomId::numeric(1).unwrap().as_numeric(), Some(1));
        assert_eq!(
            RoomId::numeric(4_294_967_294).unwrap().as_numeric(),
            Some(4_294_967_294)
        );
        assert_eq!(extra_of(RoomId::numeric(0)), Some(5013));
        assert_eq!(extra_of(RoomId::numeric(u32::MAX)), Some(5013));
    }

    #[test]
    fn wire_parse_follows_use_string_room_id() {
        assert_eq!(RoomId::parse("123", false).unwrap().as_numeric(), Some(123));
        assert_eq!(RoomId::parse("123", true).unwrap().as_str(), Some("123"));
        assert_ne!(
            RoomId::parse("123", false).unwrap(),
            RoomId::parse("123", true).unwrap()
        );
        for bad in [
            "",
            "0",
            "0123",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "4294967295",
            "99999999999",
            "abc",
        ] {
            assert_eq!(extra_of(RoomId::parse(bad, false)), Some(5013), "{bad:?}");
        }
        assert_eq!(
            RoomId::parse("4294967294", false).unwrap().as_numeric(),
            Some(4_294_967_294)
        );
    }

    #[test]
    fn string_room_charset_and_length() {
        let all = "AZaz09 !#$%&()+-:;<=.>?@[]^_{}|~,";
        assert!(RoomId::string(all).is_ok());
        assert!(RoomId::string(&"x".repeat(64)).is_ok());
        assert_eq!(extra_of(RoomId::string(&"x".repeat(65))), Some(5012));
        assert_eq!(extra_of(RoomId::string("")), Some(5012));
        for bad in [
            "a/b", "a\"b", "a'b", "a*b", "a\\b", "a`b", "a\tb", "a\nb", "é", "房间",
        ] {
            let e = RoomId::string(bad).unwrap_err();
            assert_eq!(e.extra_code, Some(5012), "{bad:?}");
            assert!(e.message.contains("roomId"), "{}", e.message);
        }
    }

    #[test]
    fn json_form_checks_the_type_against_the_flag() {
        use serde_json::json;
        assert_eq!(
            RoomId::from_json(&json!(3364), false).unwrap().as_numeric(),
            Some(3364)
        );
        assert_eq!(
            RoomId::from_json(&json!("class-room"), true)
                .unwrap()
                .as_str(),
            Some("class-room")
        );
        assert_eq!(
            extra_of(RoomId::from_json(&json!("3364"), false)),
            Some(5016)
        );
        assert_eq!(extra_of(RoomId::from_json(&json!(3364), true)), Some(5019));
        assert_eq!(extra_of(RoomId::from_json(&json!(1.5), false)), Some(5013));
        assert_eq!(extra_of(RoomId::from_json(&json!(-1), false)), Some(5013));
        assert_eq!(extra_of(RoomId::from_json(&json!(0), false)), Some(5013));
        assert_eq!(extra_of(RoomId::from_json(&json!(null), false)), Some(5001));
        assert_eq!(extra_of(RoomId::from_json(&json!([1]), false)), Some(5002));
    }

    #[test]
    fn serde_keeps_numeric_and_string_apart() {
        let n = RoomId::numeric(123).unwrap();
        let s = RoomId::string("123").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "123");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"123\"");
        assert_eq!(serde_json::from_str::<RoomId>("123").unwrap(), n);
        assert_eq!(serde_json::from_str::<RoomId>("\"123\"").unwrap(), s);
        assert!(serde_json::from_str::<RoomId>("0").is_err());
        assert!(serde_json::from_str::<RoomId>("4294967295").is_err());
        assert!(serde_json::from_str::<RoomId>("\"a/b\"").is_err());
        assert_eq!(n.to_string(), "123");
        assert_eq!(s.to_string(), "\"123\"");
    }

    #[test]
    fn user_id_rule() {
        assert!(UserId::new("denny").is_ok());
        assert!(UserId::new("123321").is_ok());
        assert!(UserId::new("a_b-C9").is_ok());
        assert!(UserId::new(&"u".repeat(32)).is_ok());
        assert_eq!(extra_of(UserId::new("")), Some(5003));
        assert_eq!(extra_of(UserId::new(&"u".repeat(33))), Some(5008));
        for bad in ["a b", " ", "a.b", "a@b", "用户", "a\0b"] {
            let e = UserId::new(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParameter);
            assert!(e.message.contains("userId"), "{}", e.message);
        }
        assert!(serde_json::from_str::<UserId>("\"a b\"").is_err());
    }

    #[test]
    fn roles_default_by_mode() {
        assert_eq!(Role::effective(Mode::Live, None), Role::Audience);
        assert_eq!(
            Role::effective(Mode::Live, Some(Role::Anchor)),
            Role::Anchor
        );
        assert_eq!(Role::effective(Mode::Rtc, None), Role::Anchor);
        assert_eq!(
            Role::effective(Mode::Rtc, Some(Role::Audience)),
            Role::Anchor
        );
        assert_eq!(Role::Anchor.trtc_role(), 20);
        assert_eq!(Role::Audience.trtc_role(), 21);
        assert_eq!("live".parse::<Mode>().unwrap(), Mode::Live);
        assert!("LIVE".parse::<Mode>().is_err());
        assert_eq!("audience".parse::<Role>().unwrap(), Role::Audience);
        assert_eq!(
            "host".parse::<Role>().unwrap_err().extra_code,
            Some(-102055)
        );
        assert_eq!(serde_json::to_string(&Mode::Rtc).unwrap(), "\"rtc\"");
        assert_eq!(
            serde_json::to_string(&Role::Audience).unwrap(),
            "\"audience\""
        );
    }
}
