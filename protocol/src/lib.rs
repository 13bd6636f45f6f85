//! # rtcroom-protocol
//!
//! The pieces every rtcroom component shares, as pure logic (no I/O, no async, no clock: every
//! function that needs the time takes `now` as unix seconds):
//!
//! - [`ids`]: TRTC's identity rules — [`RoomId`] (numeric 1..=4294967294 or string of 1–64
//!   bytes; numeric 123 and string "123" are different rooms), [`UserId`], [`Mode`], [`Role`].
//! - [`usersig`]: UserSig and PrivateMapKey (tls-sig-api-v2), generated and verified exactly as
//!   the official libraries make them.
//! - [`error`]: TRTC's error codes ([`ErrorCode`]) and the one error type, [`RtcError`], that
//!   carries a code, TRTC's server/extra code and a message.
//! - [`signal`]: the signalling wire messages, versioned and size-limited on decode.
//!
//! ```
//! use rtcroom_protocol::{RoomId, usersig};
//!
//! let now = 1_700_000_000;
//! let sig = usersig::gen_user_sig(1_400_000_000, "secret", "denny", 86_400, now);
//! let ticket = usersig::verify_user_sig(&sig, 1_400_000_000, "secret", "denny", now).unwrap();
//! assert_eq!(ticket.expires_at(), now + 86_400);
//!
//! let err = RoomId::parse("0", false).unwrap_err();
//! assert_eq!(err.code.value(), 0x1000); // INVALID_PARAMETER
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod ids;
pub mod signal;
pub mod usersig;

pub use error::{ErrorCode, RtcError, RtcResult};
pub use ids::{Mode, Role, RoomId, UserId};
