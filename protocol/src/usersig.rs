//! UserSig and PrivateMapKey (tls-sig-api-v2): generation and verification.
//!
//! A ticket is `custom_base64(zlib(json))` where the JSON holds `TLS.ver`, `TLS.identifier`,
//! `TLS.sdkappid`, `TLS.time`, `TLS.expire` (relative seconds), optionally `TLS.userbuf`
//! (standard base64) and `TLS.sig` = base64(HMAC-SHA256(secret key as raw UTF-8 bytes, the
//! 4–5 signed lines)). The custom base64 maps `+`→`*`, `/`→`-`, `=`→`_`.
//!
//! Verification never compares strings: it decodes, inflates (any zlib level), parses the JSON
//! (any key order or spacing), checks sdkAppId, identifier and expiry (`now > time + expire` is
//! expired, in that order, as the official Go verifier does) and then the HMAC in constant
//! time. A PrivateMapKey is a UserSig whose userbuf is a big-endian binary record naming the
//! account, app, room, absolute expiry and privilege bits (reference §4.3).
//!
//! Every failure is a [`SigError`] with TRTC's code ([`SigError::extra_code`]).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{ErrorCode, RtcError, extra};
use crate::ids::RoomId;

type HmacSha256 = Hmac<Sha256>;

/// The official libraries' default validity: 180 days.
pub const DEFAULT_EXPIRE_SECS: u64 = 180 * 86_400;
/// Longest ticket accepted, in characters. Official tickets are a few hundred characters.
pub const MAX_TICKET_LEN: usize = 4096;
/// Largest inflated JSON accepted, in bytes (guards against zlib bombs).
pub const MAX_INFLATED_LEN: usize = 16 * 1024;

/// Standard alphabet, padding optional on decode (the official decoders differ here).
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a ticket was refused. Each variant maps to TRTC's code ([`SigError::extra_code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigError {
    /// 70002: the ticket is empty.
    #[error("userSig is empty")]
    Empty,
    /// 70003: the ticket is not well formed (encoding, JSON, a missing or mistyped field).
    #[error("userSig is malformed: {0}")]
    Malformed(String),
    /// 70004: the compressed body does not inflate (truncated or corrupted).
    #[error("userSig is truncated or corrupted: {0}")]
    Truncated(String),
    /// 70014: the ticket was made for another sdkAppId.
    #[error("userSig was made for sdkAppId {found}, not {expected}")]
    SdkAppIdMismatch {
        /// The sdkAppId the caller expected.
        expected: u64,
        /// The sdkAppId in the ticket.
        found: u64,
    },
    /// 70013: the ticket was made for another user.
    #[error("userSig was made for userId {found:?}, not {expected:?}")]
    IdentifierMismatch {
        /// The userId the caller expected.
        expected: String,
        /// The identifier in the ticket.
        found: String,
    },
    /// 70001: the ticket has expired.
    #[error("userSig expired at {expired_at} (unix seconds), now is {now}")]
    Expired {
        /// When it stopped being valid (`time + expire`).
        expired_at: u64,
        /// The clock used for the check.
        now: u64,
    },
    /// 70009: the signature does not match (signed with another key).
    #[error("userSig signature does not match: it was signed with another secret key")]
    SignatureMismatch,
    /// -102011: the PrivateMapKey was made for another room.
    #[error("privateMapKey is for room {found}, not {expected}")]
    RoomMismatch {
        /// The room the caller is entering.
        expected: String,
        /// The room in the key.
        found: String,
    },
    /// -100006: the PrivateMapKey lacks the privilege bit for an action (or carries no
    /// privilege record at all).
    #[error("privateMapKey does not grant {0}")]
    PrivilegeMissing(&'static str),
}

impl SigError {
    /// TRTC's server/account code for this failure.
    pub fn extra_code(&self) -> i32 {
        match self {
            SigError::Empty => extra::SIG_EMPTY,
            SigError::Malformed(_) => extra::SIG_MALFORMED,
            SigError::Truncated(_) => extra::SIG_TRUNCATED,
            SigError::SdkAppIdMismatch { .. } => extra::SIG_SDKAPPID_MISMATCH,
            SigError::IdentifierMismatch { .. } => extra::SIG_IDENTIFIER_MISMATCH,
            SigError::Expired { .. } => extra::SIG_EXPIRED,
            SigError::SignatureMismatch => extra::SIG_KEY_MISMATCH,
            SigError::RoomMismatch { .. } => extra::NO_PERMISSION_ENTER_ROOM,
            SigError::PrivilegeMissing(_) => extra::PRIVILEGE_FLAG_ERROR,
        }
    }

    /// The TRTC error code a client sees for it: account errors (700xx) come under
    /// `SIGNAL_CHANNEL_SETUP_FAILED`, permission errors under `JOIN_ROOM_FAILED`.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            SigError::RoomMismatch { .. } | SigError::PrivilegeMissing(_) => {
                ErrorCode::JoinRoomFailed
            }
            _ => ErrorCode::SignalChannelSetupFailed,
        }
    }
}

impl From<SigError> for RtcError {
    fn from(e: SigError) -> RtcError {
        RtcError::with_extra(e.error_code(), e.extra_code(), e.to_string())
    }
}

/// A decoded ticket (UserSig or PrivateMapKey), as its JSON says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// `TLS.identifier`: the userId.
    pub identifier: String,
    /// `TLS.sdkappid`.
    pub sdk_app_id: u64,
    /// `TLS.time`: when it was made (unix seconds).
    pub time: u64,
    /// `TLS.expire`: validity in seconds from `time`.
    pub expire: u64,
    /// `TLS.userbuf`, decoded, when present (a PrivateMapKey record).
    pub userbuf: Option<Vec<u8>>,
    /// `TLS.userbuf` exactly as in the JSON: the HMAC covers this text.
    userbuf_text: Option<String>,
    /// `TLS.sig`, decoded.
    sig: Vec<u8>,
}

impl Ticket {
    /// The last second at which the ticket is valid (`time + expire`).
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }

    /// Whether the ticket is expired at `now` (`now > time + expire`).
    pub fn is_expired(&self, now: u64) -> bool {
        now > self.expires_at()
    }
}

#[derive(Deserialize)]
struct RawTicket {
    #[serde(rename = "TLS.identifier")]
    identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    sdk_app_id: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    /// Go's encoder omits a zero expire (`omitempty`).
    #[serde(rename = "TLS.expire", default)]
    expire: u64,
    #[serde(rename = "TLS.userbuf", default)]
    userbuf: Option<String>,
    #[serde(rename = "TLS.sig")]
    sig: String,
}

#[derive(Serialize)]
struct RawTicketOut<'a> {
    #[serde(rename = "TLS.ver")]
    ver: &'a str,
    #[serde(rename = "TLS.identifier")]
    identifier: &'a str,
    #[serde(rename = "TLS.sdkappid")]
    sdk_app_id: u64,
    #[serde(rename = "TLS.expire")]
    expire: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    #[serde(rename = "TLS.userbuf", skip_serializing_if = "Option::is_none")]
    userbuf: Option<&'a str>,
    #[serde(rename = "TLS.sig")]
    sig: &'a str,
}

/// The HMAC over the signed lines, fed piece by piece (no allocation).
fn signature_mac(
    secret_key: &str,
    identifier: &str,
    sdk_app_id: u64,
    time: u64,
    expire: u64,
    userbuf_text: Option<&str>,
) -> HmacSha256 {
    // unwrap-free: HMAC accepts keys of any length.
    let mut mac = match HmacSha256::new_from_slice(secret_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    let mut num = itoa_buf::Buf::new();
    mac.update(b"TLS.identifier:");
    mac.update(identifier.as_bytes());
    mac.update(b"\nTLS.sdkappid:");
    mac.update(num.format(sdk_app_id));
    mac.update(b"\nTLS.time:");
    mac.update(num.format(time));
    mac.update(b"\nTLS.expire:");
    mac.update(num.format(expire));
    mac.update(b"\n");
    if let Some(ub) = userbuf_text {
        mac.update(b"TLS.userbuf:");
        mac.update(ub.as_bytes());
        mac.update(b"\n");
    }
    mac
}

/// Tiny decimal formatter so the hot path does not allocate.
mod itoa_buf {
    pub struct Buf([u8; 20]);
    impl Buf {
        pub fn new() -> Self {
            Buf([0; 20])
        }
        pub fn format(&mut self, mut n: u64) -> &[u8] {
            let mut i = self.0.len();
            loop {
                i -= 1;
                // n % 10 < 10, so the cast cannot truncate.
                self.0[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            &self.0[i..]
        }
    }
}

/// Encode bytes with the tls-sig-api custom base64 (`+`→`*`, `/`→`-`, `=`→`_`).
pub fn base64_url_encode(data: &[u8]) -> String {
    general_purpose::STANDARD
        .encode(data)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

/// Decode the tls-sig-api custom base64; padding (`_`) is optional.
pub fn base64_url_decode(text: &str) -> Result<Vec<u8>, SigError> {
    let mapped: Vec<u8> = text
        .bytes()
        .map(|b| match b {
            b'*' => b'+',
            b'-' => b'/',
            b'_' => b'=',
            b => b,
        })
        .collect();
    STANDARD_LENIENT
        .decode(&mapped)
        .map_err(|e| SigError::Malformed(format!("not valid base64: {e}")))
}

/// Make a ticket over optional userbuf bytes.
fn gen_ticket(
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    expire: u64,
    now: u64,
    userbuf: Option<&[u8]>,
) -> String {
    let userbuf_text = userbuf.map(|b| STANDARD.encode(b));
    let mac = signature_mac(
        secret_key,
        user_id,
        sdk_app_id,
        now,
        expire,
        userbuf_text.as_deref(),
    );
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    let doc = RawTicketOut {
        ver: "2.0",
        identifier: user_id,
        sdk_app_id,
        expire,
        time: now,
        userbuf: userbuf_text.as_deref(),
        sig: &sig,
    };
    // Serialising a struct of strings and integers cannot fail.
    let json = serde_json::to_vec(&doc).unwrap_or_default();
    // zlib's algorithm at its default level, as the official libraries use: for a body this
    // short it emits one fixed-Huffman block (miniz_oxide picked dynamic ones), which is
    // also the cheapest kind to verify.
    let mut out = vec![0u8; zlib_rs::compress_bound(json.len())];
    let (compressed, rc) =
        zlib_rs::compress_slice(&mut out, &json, zlib_rs::DeflateConfig::default());
    // A buffer of `compress_bound` bytes always holds the stream.
    debug_assert_eq!(rc, zlib_rs::ReturnCode::Ok);
    base64_url_encode(compressed)
}

/// Make a UserSig exactly as `genUserSig(userId, expire)` does, with the clock at `now`.
pub fn gen_user_sig(
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    expire: u64,
    now: u64,
) -> String {
    gen_ticket(sdk_app_id, secret_key, user_id, expire, now, None)
}

/// Make a PrivateMapKey as `genPrivateMapKey` (numeric room) or
/// `genPrivateMapKeyWithStringRoomID` (string room) does, with the clock at `now`.
pub fn gen_private_map_key(
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    expire: u64,
    now: u64,
    room: &RoomId,
    privileges: Privileges,
) -> String {
    let record = MapKeyRecord {
        account: user_id.to_owned(),
        // The record's sdkappid is 32 bits; TRTC sdkAppIds fit (they are u32 everywhere else).
        sdk_app_id: sdk_app_id as u32,
        room: room.clone(),
        // Absolute expiry truncated to 32 bits, as the official libraries do.
        expire_at: now.saturating_add(expire) as u32,
        privileges,
        account_type: 0,
    };
    let userbuf = record.encode();
    gen_ticket(sdk_app_id, secret_key, user_id, expire, now, Some(&userbuf))
}

/// Inflate a ticket's zlib body (header and Adler-32 checked), refusing more than
/// [`MAX_INFLATED_LEN`] bytes. The decompressor and its output buffer are kept per thread,
/// and the inflater is zlib-rs, which decodes the fixed-Huffman blocks official tickets use
/// from prebuilt tables: a fresh `flate2` reader took 2.5 µs and ~75 KB of allocations for
/// a 134-byte body, miniz_oxide with a reused state 1.4 µs (it rebuilds the fixed tables),
/// zlib-rs with a reused state 0.3 µs (see BENCHMARKS.md, ticket verification).
fn inflate_ticket(compressed: &[u8]) -> Result<Vec<u8>, SigError> {
    use zlib_rs::{Inflate, InflateFlush, Status};
    struct Inflater {
        state: Inflate,
        out: Vec<u8>,
    }
    fn fresh() -> Box<Inflater> {
        Box::new(Inflater {
            state: Inflate::new(true, 15),
            out: vec![0; MAX_INFLATED_LEN + 1],
        })
    }
    fn run(inf: &mut Inflater, compressed: &[u8]) -> Result<Vec<u8>, SigError> {
        inf.state.reset(true);
        // The whole body is here and the output buffer is flat: one call either finishes,
        // fills the buffer (too big), runs out of input (truncated) or fails.
        let status = inf
            .state
            .decompress(compressed, &mut inf.out, InflateFlush::Finish);
        let status = status.map_err(|e| SigError::Truncated(format!("zlib: {}", e.as_str())))?;
        // The buffer holds one byte more than allowed: reaching it means too big.
        let written = usize::try_from(inf.state.total_out()).unwrap_or(usize::MAX);
        if written > MAX_INFLATED_LEN {
            return Err(SigError::Malformed(format!(
                "inflates to more than {MAX_INFLATED_LEN} bytes"
            )));
        }
        if status != Status::StreamEnd {
            return Err(SigError::Truncated("zlib: the stream ends early".into()));
        }
        Ok(inf.out[..written].to_vec())
    }
    thread_local! {
        static INFLATER: std::cell::RefCell<Option<Box<Inflater>>> =
            const { std::cell::RefCell::new(None) };
    }
    INFLATER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => run(slot.get_or_insert_with(fresh), compressed),
        // Only a re-entered call could find it borrowed (nothing in here calls back); it
        // gets a decompressor of its own.
        Err(_) => run(&mut fresh(), compressed),
    })
}

/// Decode a ticket without checking it. Use [`verify_user_sig`] to check one.
pub fn decode_ticket(ticket: &str) -> Result<Ticket, SigError> {
    if ticket.is_empty() {
        return Err(SigError::Empty);
    }
    if ticket.len() > MAX_TICKET_LEN {
        return Err(SigError::Malformed(format!(
            "longer than {MAX_TICKET_LEN} characters"
        )));
    }
    let compressed = base64_url_decode(ticket)?;
    let json = inflate_ticket(&compressed)?;
    if json.is_empty() {
        return Err(SigError::Truncated("inflates to nothing".into()));
    }
    let raw: RawTicket =
        serde_json::from_slice(&json).map_err(|e| SigError::Malformed(format!("JSON: {e}")))?;
    let sig = STANDARD_LENIENT
        .decode(raw.sig.as_bytes())
        .map_err(|e| SigError::Malformed(format!("TLS.sig is not base64: {e}")))?;
    let userbuf = match &raw.userbuf {
        Some(text) => Some(
            STANDARD_LENIENT
                .decode(text.as_bytes())
                .map_err(|e| SigError::Malformed(format!("TLS.userbuf is not base64: {e}")))?,
        ),
        None => None,
    };
    Ok(Ticket {
        identifier: raw.identifier,
        sdk_app_id: raw.sdk_app_id,
        time: raw.time,
        expire: raw.expire,
        userbuf,
        userbuf_text: raw.userbuf,
        sig,
    })
}

/// Verify a UserSig (or the ticket part of a PrivateMapKey) for `(sdk_app_id, user_id)` at
/// `now`: sdkAppId, then identifier, then expiry, then the HMAC.
pub fn verify_user_sig(
    ticket: &str,
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    now: u64,
) -> Result<Ticket, SigError> {
    let t = decode_ticket(ticket)?;
    if t.sdk_app_id != sdk_app_id {
        return Err(SigError::SdkAppIdMismatch {
            expected: sdk_app_id,
            found: t.sdk_app_id,
        });
    }
    if t.identifier != user_id {
        return Err(SigError::IdentifierMismatch {
            expected: user_id.to_owned(),
            found: t.identifier,
        });
    }
    if t.is_expired(now) {
        return Err(SigError::Expired {
            expired_at: t.expires_at(),
            now,
        });
    }
    let mac = signature_mac(
        secret_key,
        &t.identifier,
        t.sdk_app_id,
        t.time,
        t.expire,
        t.userbuf_text.as_deref(),
    );
    mac.verify_slice(&t.sig)
        .map_err(|_| SigError::SignatureMismatch)?;
    Ok(t)
}

/// Verify a PrivateMapKey for `(sdk_app_id, user_id, room)` at `now` and return its
/// permissions. The ticket is verified as a UserSig first; then its record must name the same
/// account, app and room and must not be past its absolute expiry.
pub fn verify_private_map_key(
    ticket: &str,
    sdk_app_id: u64,
    secret_key: &str,
    user_id: &str,
    room: &RoomId,
    now: u64,
) -> Result<PrivateMapKey, SigError> {
    let t = verify_user_sig(ticket, sdk_app_id, secret_key, user_id, now)?;
    let Some(userbuf) = &t.userbuf else {
        return Err(SigError::PrivilegeMissing(
            "anything: it is a plain UserSig with no privilege record (userbuf)",
        ));
    };
    let record = MapKeyRecord::decode(userbuf)?;
    if record.account != user_id {
        return Err(SigError::IdentifierMismatch {
            expected: user_id.to_owned(),
            found: record.account,
        });
    }
    if u64::from(record.sdk_app_id) != sdk_app_id {
        return Err(SigError::SdkAppIdMismatch {
            expected: sdk_app_id,
            found: u64::from(record.sdk_app_id),
        });
    }
    if &record.room != room {
        return Err(SigError::RoomMismatch {
            expected: room.to_string(),
            found: record.room.to_string(),
        });
    }
    if now > u64::from(record.expire_at) {
        return Err(SigError::Expired {
            expired_at: u64::from(record.expire_at),
            now,
        });
    }
    Ok(PrivateMapKey { ticket: t, record })
}

/// A verified PrivateMapKey: the ticket and its privilege record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateMapKey {
    /// The verified ticket.
    pub ticket: Ticket,
    /// The privilege record from its userbuf.
    pub record: MapKeyRecord,
}

impl PrivateMapKey {
    /// The permissions it grants.
    pub fn privileges(&self) -> Privileges {
        self.record.privileges
    }

    /// `Ok` when the key grants `privilege`, else -100006.
    pub fn require(&self, privilege: Privilege) -> Result<(), SigError> {
        self.record.privileges.require(privilege)
    }
}

/// The binary record a PrivateMapKey carries in its userbuf (big-endian):
/// `u8 ver, u16 accountLen, account, u32 sdkappid, u32 roomId, u32 expireAt, u32 privilegeMap,
/// u32 accountType[, u16 roomStrLen, roomStr]` — version 0 for a numeric room, 1 for a string
/// room (then the numeric room field is 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapKeyRecord {
    /// The userId it is bound to.
    pub account: String,
    /// The sdkAppId it is bound to.
    pub sdk_app_id: u32,
    /// The room it is bound to.
    pub room: RoomId,
    /// Absolute expiry, unix seconds.
    pub expire_at: u32,
    /// The privilege bits.
    pub privileges: Privileges,
    /// Account type (always 0 in practice).
    pub account_type: u32,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SigError> {
        if self.buf.len() < n {
            return Err(SigError::Truncated(format!(
                "privilege record ends inside {what}"
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, SigError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, SigError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, SigError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl MapKeyRecord {
    /// Serialise the record as the official libraries do.
    pub fn encode(&self) -> Vec<u8> {
        let account = self.account.as_bytes();
        let mut out = Vec::with_capacity(32 + account.len());
        let str_room = self.room.as_str();
        out.push(u8::from(str_room.is_some()));
        // userIds are ≤ 32 bytes and room strings ≤ 64 bytes, so the u16 lengths cannot
        // truncate for validated ids; longer raw accounts are clamped rather than wrapped.
        out.extend_from_slice(&(account.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(&account[..account.len().min(u16::MAX as usize)]);
        out.extend_from_slice(&self.sdk_app_id.to_be_bytes());
        out.extend_from_slice(&self.room.as_numeric().unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.expire_at.to_be_bytes());
        out.extend_from_slice(&u32::from(self.privileges.bits()).to_be_bytes());
        out.extend_from_slice(&self.account_type.to_be_bytes());
        if let Some(s) = str_room {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Parse a record; trailing bytes are refused.
    pub fn decode(buf: &[u8]) -> Result<MapKeyRecord, SigError> {
        let mut r = Reader { buf };
        let version = r.u8("the version")?;
        if version > 1 {
            return Err(SigError::Malformed(format!(
                "privilege record version {version} is unknown (0 numeric room, 1 string room)"
            )));
        }
        let account_len = r.u16("the account length")? as usize;
        let account = std::str::from_utf8(r.take(account_len, "the account")?)
            .map_err(|_| SigError::Malformed("privilege record account is not UTF-8".into()))?
            .to_owned();
        let sdk_app_id = r.u32("the sdkappid")?;
        let numeric_room = r.u32("the room id")?;
        let expire_at = r.u32("the expiry")?;
        let privilege_map = r.u32("the privilege map")?;
        let account_type = r.u32("the account type")?;
        let room = if version == 1 {
            let len = r.u16("the room string length")? as usize;
            let s = std::str::from_utf8(r.take(len, "the room string")?).map_err(|_| {
                SigError::Malformed("privilege record room string is not UTF-8".into())
            })?;
            RoomId::string(s)
        } else {
            RoomId::numeric(numeric_room)
        }
        .map_err(|e| SigError::Malformed(format!("privilege record room: {}", e.message)))?;
        if !r.buf.is_empty() {
            return Err(SigError::Malformed(format!(
                "privilege record has {} trailing bytes",
                r.buf.len()
            )));
        }
        Ok(MapKeyRecord {
            account,
            sdk_app_id,
            room,
            expire_at,
            // Only the low 8 bits are defined; higher bits are ignored.
            privileges: Privileges::from_bits((privilege_map & 0xff) as u8),
            account_type,
        })
    }
}

/// One permission a PrivateMapKey can grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// Bit 1 (1): create the room.
    CreateRoom,
    /// Bit 2 (2): enter the room.
    EnterRoom,
    /// Bit 3 (4): send audio.
    SendAudio,
    /// Bit 4 (8): receive audio.
    ReceiveAudio,
    /// Bit 5 (16): send video.
    SendVideo,
    /// Bit 6 (32): receive video.
    ReceiveVideo,
    /// Bit 7 (64): send the sub-stream (screen).
    SendSubStream,
    /// Bit 8 (128): receive the sub-stream.
    ReceiveSubStream,
}

impl Privilege {
    /// All privileges, lowest bit first.
    pub const ALL: [Privilege; 8] = [
        Privilege::CreateRoom,
        Privilege::EnterRoom,
        Privilege::SendAudio,
        Privilege::ReceiveAudio,
        Privilege::SendVideo,
        Privilege::ReceiveVideo,
        Privilege::SendSubStream,
        Privilege::ReceiveSubStream,
    ];

    /// The bit's value.
    pub const fn bit(self) -> u8 {
        match self {
            Privilege::CreateRoom => 1,
            Privilege::EnterRoom => 2,
            Privilege::SendAudio => 4,
            Privilege::ReceiveAudio => 8,
            Privilege::SendVideo => 16,
            Privilege::ReceiveVideo => 32,
            Privilege::SendSubStream => 64,
            Privilege::ReceiveSubStream => 128,
        }
    }

    /// A short name (`create`, `enter`, `send-audio`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Privilege::CreateRoom => "create",
            Privilege::EnterRoom => "enter",
            Privilege::SendAudio => "send-audio",
            Privilege::ReceiveAudio => "receive-audio",
            Privilege::SendVideo => "send-video",
            Privilege::ReceiveVideo => "receive-video",
            Privilege::SendSubStream => "send-sub-stream",
            Privilege::ReceiveSubStream => "receive-sub-stream",
        }
    }
}

/// A set of [`Privilege`]s (TRTC's 8-bit privilege map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Privileges(u8);

impl Privileges {
    /// Every permission (255).
    pub const ALL: Privileges = Privileges(0xff);
    /// No permission.
    pub const NONE: Privileges = Privileges(0);

    /// From the raw bits.
    pub const fn from_bits(bits: u8) -> Privileges {
        Privileges(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether `p` is granted.
    pub const fn contains(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }

    /// `Ok` when `p` is granted, else -100006.
    pub fn require(self, p: Privilege) -> Result<(), SigError> {
        if self.contains(p) {
            Ok(())
        } else {
            Err(SigError::PrivilegeMissing(p.name()))
        }
    }

    /// The granted privileges, lowest bit first.
    pub fn iter(self) -> impl Iterator<Item = Privilege> {
        Privilege::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl fmt::Display for Privileges {
    /// `255 (create,enter,...)`; `0 (none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Privilege::name).collect();
        if names.is_empty() {
            write!(f, "{} (none)", self.0)
        } else {
            write!(f, "{} ({})", self.0, names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: u64 = 1_400_000_000;
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    const NOW: u64 = 1_700_000_000;

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn inflate_checks_the_stream_and_caps_the_size() {
        let json = br#"{"TLS.ver":"2.0","TLS.identifier":"alice"}"#;
        let good = zlib(json);
        assert_eq!(inflate_ticket(&good).unwrap(), json);
        // A wrong Adler-32 trailer, a cut stream, a wrong header: refused as truncated.
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(matches!(
            inflate_ticket(&bad_sum),
            Err(SigError::Truncated(_))
        ));
        let cut = &good[..good.len() - 6];
        assert!(matches!(inflate_ticket(cut), Err(SigError::Truncated(_))));
        assert!(matches!(
            inflate_ticket(&json[..]),
            Err(SigError::Truncated(_))
        ));
        // The cap: exactly MAX_INFLATED_LEN passes, one byte more is refused (a zlib bomb
        // stops at the cap instead of filling memory).
        let at_cap = vec![b' '; MAX_INFLATED_LEN];
        assert_eq!(
            inflate_ticket(&zlib(&at_cap)).unwrap().len(),
            MAX_INFLATED_LEN
        );
        let over = vec![b' '; MAX_INFLATED_LEN + 1];
        assert!(matches!(
            inflate_ticket(&zlib(&over)),
            Err(SigError::Malformed(_))
        ));
        let bomb = vec![0u8; 10 * 1024 * 1024];
        assert!(matches!(
            inflate_ticket(&zlib(&bomb)),
            Err(SigError::Malformed(_))
        ));
        // The per-thread decompressor starts clean after every failure.
        assert_eq!(inflate_ticket(&good).unwrap(), json);
    }

    #[test]
    fn python_official_hmac_vector() {
        // Reference §4.4: official Python library with time patched to 1700000000.
        let mac = signature_mac(KEY, "xiaojun", APP, NOW, 15_552_000, None);
        assert_eq!(
            STANDARD.encode(mac.finalize().into_bytes()),
            "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="
        );
        // The third-party crate's vector (milliseconds, but a valid HMAC), with and without userbuf.
        let mac = signature_mac(KEY, "0", APP, 1_569_910_200_000, 15_552_000_000, None);
        assert_eq!(
            STANDARD.encode(mac.finalize().into_bytes()),
            "bEj7EPKeOGh/DZ+LevCNXjSrLtgjj+lC8Ed0uirJXYU="
        );
        let mac = signature_mac(
            KEY,
            "0",
            APP,
            1_569_910_200_000,
            15_552_000_000,
            Some("YWJj"),
        );
        assert_eq!(
            STANDARD.encode(mac.finalize().into_bytes()),
            "sWtbl2+lkv1DcoBF2Y2IWjGB44KoDgDIFxdhzwVXo2Q="
        );
    }

    #[test]
    fn python_official_tickets_verify() {
        // Python's json.dumps spacing and zlib default level.
        let sig = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPXFmekgG3zKHM1T9D3LzdODi-OKs8vCqpxcAvydnV2SSv2cy03cPcpDnA2SMgu0nUxslWoBHdYzUg__";
        let t = verify_user_sig(sig, APP, KEY, "xiaojun", NOW).unwrap();
        assert_eq!(t.expire, 15_552_000);
        let key = "eJxdjl0LgjAUhv*K7Lbwi6QP6GKFqDDCSgi629xcS9PhV0r031Ozgt6bA89zDud9gAAd1ZrlYKUAU9XBVBmIoCwtRSTeohE4u1bpRxY0xlIK2iljpo8ZHWukyFlvLMsyf7wUt4HO--arguWkivovEEKXOcmFmNIgya4NeEe24f4c2xrs4y*G8a0heH-WLmFNrObuco9ncEMcHCNs600xqTWKQs9nnJyikByQtwbPF*BNRVk_";
        let room = RoomId::numeric(10000).unwrap();
        let pmk = verify_private_map_key(key, APP, KEY, "xiaojun", &room, NOW).unwrap();
        assert_eq!(pmk.record.expire_at, 1_715_552_000);
        assert_eq!(pmk.privileges(), Privileges::ALL);
    }

    #[test]
    fn record_matches_python_userbuf_bytes() {
        let rec = MapKeyRecord {
            account: "xiaojun".into(),
            sdk_app_id: 1_400_000_000,
            room: RoomId::numeric(10000).unwrap(),
            expire_at: 1_715_552_000,
            privileges: Privileges::ALL,
            account_type: 0,
        };
        assert_eq!(
            STANDARD.encode(rec.encode()),
            "AAAHeGlhb2p1blNyTgAAACcQZkE/AAAAAP8AAAAA"
        );
        let rec = MapKeyRecord {
            room: RoomId::string("adbjkl").unwrap(),
            ..rec
        };
        assert_eq!(
            STANDARD.encode(rec.encode()),
            "AQAHeGlhb2p1blNyTgAAAAAAZkE/AAAAAP8AAAAAAAZhZGJqa2w="
        );
        assert_eq!(MapKeyRecord::decode(&rec.encode()).unwrap(), rec);
    }

    #[test]
    fn record_decode_refuses_bad_buffers() {
        let good = MapKeyRecord {
            account: "u".into(),
            sdk_app_id: 1,
            room: RoomId::string("r").unwrap(),
            expire_at: 5,
            privileges: Privileges::from_bits(42),
            account_type: 0,
        }
        .encode();
        for n in 0..good.len() {
            let e = MapKeyRecord::decode(&good[..n]).unwrap_err();
            assert!(matches!(e, SigError::Truncated(_)), "{n}: {e:?}");
            assert_eq!(e.extra_code(), 70004);
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(MapKeyRecord::decode(&long).unwrap_err().extra_code(), 70003);
        let mut bad_ver = good.clone();
        bad_ver[0] = 2;
        assert_eq!(
            MapKeyRecord::decode(&bad_ver).unwrap_err().extra_code(),
            70003
        );
        // Version 0 with room 0 is not a room.
        let zero_room = MapKeyRecord {
            room: RoomId::numeric(1).unwrap(),
            ..MapKeyRecord::decode(&good).unwrap()
        }
        .encode();
        let mut zeroed = zero_room.clone();
        zeroed[3 + 1 + 4..3 + 1 + 8].copy_from_slice(&[0, 0, 0, 0]);
        assert!(MapKeyRecord::decode(&zeroed).is_err());
    }

    #[test]
    fn checks_in_order_with_codes() {
        let sig = gen_user_sig(APP, KEY, "denny", 300, NOW);
        assert!(verify_user_sig(&sig, APP, KEY, "denny", NOW + 300).is_ok());
        let code = |r: Result<Ticket, SigError>| r.unwrap_err().extra_code();
        assert_eq!(
            code(verify_user_sig(&sig, APP + 1, KEY, "denny", NOW)),
            70014
        );
        assert_eq!(code(verify_user_sig(&sig, APP, KEY, "danny", NOW)), 70013);
        assert_eq!(
            code(verify_user_sig(&sig, APP, KEY, "denny", NOW + 301)),
            70001
        );
        assert_eq!(
            code(verify_user_sig(&sig, APP, "other", "denny", NOW)),
            70009
        );
        assert_eq!(code(verify_user_sig("", APP, KEY, "denny", NOW)), 70002);
        assert_eq!(code(verify_user_sig("!!!", APP, KEY, "denny", NOW)), 70003);
        assert_eq!(
            // Cut on a 4-character boundary: valid base64, half a zlib stream.
            code(verify_user_sig(
                &sig[..(sig.len() / 2) & !3],
                APP,
                KEY,
                "denny",
                NOW
            )),
            70004
        );
        let long = "A".repeat(MAX_TICKET_LEN + 1);
        assert_eq!(code(verify_user_sig(&long, APP, KEY, "denny", NOW)), 70003);
    }

    #[test]
    fn privileges_display_and_require() {
        let p = Privileges::from_bits(42);
        assert_eq!(p.to_string(), "42 (enter,receive-audio,receive-video)");
        assert!(p.require(Privilege::EnterRoom).is_ok());
        let e = p.require(Privilege::SendVideo).unwrap_err();
        assert_eq!(e.extra_code(), -100006);
        assert_eq!(e.error_code(), ErrorCode::JoinRoomFailed);
        assert_eq!(Privileges::NONE.to_string(), "0 (none)");
        assert_eq!(Privileges::from_bits(0xab).iter().count(), 5);
    }
}
