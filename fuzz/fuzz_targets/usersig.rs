//! UserSig / PrivateMapKey verification with a fixed key: every join carries a ticket.
//!
//! The first byte chooses what the rest is:
//! - 0: the ticket text itself (base64url of a zlib stream of JSON), verified as a UserSig
//!   and as a PrivateMapKey for a numeric and a string room;
//! - 1: the ticket's JSON, compressed and encoded here, so the fuzzer works on the JSON and
//!   the privilege record rather than on zlib bits;
//! - 2: a PrivateMapKey privilege record (the userbuf's binary form).

#![no_main]

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use rtcroom_protocol::RoomId;
use rtcroom_protocol::usersig::{
    MapKeyRecord, base64_url_encode, decode_ticket, verify_private_map_key, verify_user_sig,
};

/// The official test vectors' app, key and user (`/work/shared/vectors`).
const SDK_APP_ID: u64 = 1_400_000_000;
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
const USER: &str = "denny";
const NOW: u64 = 1_700_000_000;

fn verify_all(ticket: &str) {
    let _ = decode_ticket(ticket);
    if let Ok(t) = verify_user_sig(ticket, SDK_APP_ID, KEY, USER, NOW) {
        // What verifies was made for this app and user, and has not expired.
        assert_eq!(t.sdk_app_id, SDK_APP_ID);
        assert_eq!(t.identifier, USER);
        assert!(!t.is_expired(NOW));
    }
    for room in [RoomId::numeric(10001), RoomId::string("10001")] {
        let Ok(room) = room else { continue };
        if let Ok(key) = verify_private_map_key(ticket, SDK_APP_ID, KEY, USER, &room, NOW) {
            assert_eq!(key.record.room, room);
            let _ = key.privileges();
        }
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(data);
    z.finish().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(ticket) = std::str::from_utf8(rest) {
                verify_all(ticket);
            }
        }
        1 => verify_all(&base64_url_encode(&zlib(rest))),
        _ => {
            if let Ok(record) = MapKeyRecord::decode(rest) {
                // A record that decodes encodes to something that decodes the same.
                let again = MapKeyRecord::decode(&record.encode()).expect("re-encoded record");
                assert_eq!(again, record);
            }
        }
    }
});
