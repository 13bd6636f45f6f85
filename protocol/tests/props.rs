//! Property tests: no parser panics on arbitrary input, accepted ids obey TRTC's rules, and
//! gen → verify round-trips for arbitrary valid ids.

use proptest::prelude::*;
use rtcroom_protocol::signal::decode_client;
use rtcroom_protocol::usersig::{
    MapKeyRecord, Privileges, base64_url_encode, decode_ticket, gen_private_map_key, gen_user_sig,
    verify_private_map_key, verify_user_sig,
};
use rtcroom_protocol::{RoomId, UserId};

const STR_ROOM_CHARS: &str =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !#$%&()+-:;<=.>?@[]^_{}|~,";

fn valid_user_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,32}"
}

fn valid_room() -> impl Strategy<Value = RoomId> {
    prop_oneof![
        (1u32..=4_294_967_294).prop_map(|n| RoomId::numeric(n).unwrap()),
        proptest::collection::vec(proptest::sample::select(STR_ROOM_CHARS.as_bytes()), 1..=64)
            .prop_map(|b| RoomId::string(std::str::from_utf8(&b).unwrap()).unwrap()),
    ]
}

/// Compress arbitrary bytes the way a ticket is, so fuzzing reaches the JSON and field checks.
fn wrap(json: &[u8]) -> String {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(json).unwrap();
    base64_url_encode(&enc.finish().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn room_id_parsers_never_panic_and_obey_the_rule(s in ".{0,80}", flag: bool) {
        if let Ok(room) = RoomId::parse(&s, flag) {
            if flag {
                prop_assert!(!s.is_empty() && s.len() <= 64);
                prop_assert!(s.bytes().all(|b| STR_ROOM_CHARS.as_bytes().contains(&b)));
                prop_assert_eq!(room.as_str(), Some(s.as_str()));
            } else {
                let n: u64 = s.parse().unwrap();
                prop_assert!((1..=4_294_967_294).contains(&n));
                prop_assert!(!s.starts_with('0'));
                prop_assert_eq!(room.wire_text(), s.clone());
            }
        }
        let _ = RoomId::string(&s);
        let _ = RoomId::from_json(&serde_json::Value::String(s.clone()), flag);
        let _ = serde_json::from_str::<RoomId>(&s);
    }

    #[test]
    fn room_id_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80), flag: bool) {
        let s = String::from_utf8_lossy(&b);
        let _ = RoomId::parse(&s, flag);
    }

    #[test]
    fn numeric_rooms_round_trip(n in 1u32..=4_294_967_294) {
        let r = RoomId::parse(&n.to_string(), false).unwrap();
        prop_assert_eq!(r.as_numeric(), Some(n));
        prop_assert_ne!(r, RoomId::parse(&n.to_string(), true).unwrap());
    }

    #[test]
    fn user_id_parser_never_panics_and_obeys_the_rule(s in ".{0,48}") {
        if let Ok(u) = UserId::new(&s) {
            prop_assert!(!s.is_empty() && s.len() <= 32);
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            prop_assert_eq!(u.as_str(), s.as_str());
        }
    }

    #[test]
    fn valid_user_ids_are_accepted(s in valid_user_id()) {
        prop_assert!(UserId::new(&s).is_ok());
    }

    #[test]
    fn ticket_parsers_never_panic_on_strings(s in ".{0,600}", user in ".{0,40}", now: u64) {
        let room = RoomId::numeric(1).unwrap();
        let _ = decode_ticket(&s);
        let _ = verify_user_sig(&s, 1, "k", &user, now);
        let _ = verify_private_map_key(&s, 1, "k", &user, &room, now);
    }

    #[test]
    fn ticket_parsers_never_panic_on_compressed_bytes(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let t = wrap(&b);
        let _ = decode_ticket(&t);
        let _ = verify_user_sig(&t, 1, "k", "u", 0);
    }

    #[test]
    fn ticket_parsers_never_panic_on_json_shaped_input(
        ident in ".{0,40}", app: u64, time: u64, expire: u64,
        ub in proptest::collection::vec(any::<u8>(), 0..120), sig in ".{0,60}", with_ub: bool,
    ) {
        use base64::Engine as _;
        let mut doc = serde_json::json!({
            "TLS.ver": "2.0", "TLS.identifier": ident, "TLS.sdkappid": app,
            "TLS.time": time, "TLS.expire": expire, "TLS.sig": sig,
        });
        if with_ub {
            doc["TLS.userbuf"] = base64::engine::general_purpose::STANDARD.encode(&ub).into();
        }
        let t = wrap(doc.to_string().as_bytes());
        let room = RoomId::string("r").unwrap();
        let _ = verify_user_sig(&t, app, "k", &ident, time);
        let _ = verify_private_map_key(&t, app, "k", &ident, &room, time);
        let _ = MapKeyRecord::decode(&ub);
    }

    #[test]
    fn signalling_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_client(&b);
    }

    #[test]
    fn user_sig_round_trips(
        user in valid_user_id(), app in 1u64..=u32::MAX as u64, key in "[ -~]{1,64}",
        now in 0u64..=4_000_000_000, expire in 0u64..=400_000_000,
    ) {
        let sig = gen_user_sig(app, &key, &user, expire, now);
        let t = verify_user_sig(&sig, app, &key, &user, now + expire).unwrap();
        prop_assert_eq!(t.identifier, user.clone());
        prop_assert_eq!(t.time, now);
        prop_assert_eq!(t.expire, expire);
        prop_assert_eq!(
            verify_user_sig(&sig, app, &key, &user, now + expire + 1).unwrap_err().extra_code(),
            70001
        );
        let other_key = format!("{key}x");
        prop_assert_eq!(
            verify_user_sig(&sig, app, &other_key, &user, now).unwrap_err().extra_code(),
            70009
        );
    }

    #[test]
    fn private_map_key_round_trips(
        user in valid_user_id(), app in 1u64..=u32::MAX as u64, room in valid_room(),
        bits: u8, now in 0u64..=4_000_000_000, expire in 0u64..=200_000_000,
    ) {
        let key = "secret";
        let pmk = gen_private_map_key(app, key, &user, expire, now, &room, Privileges::from_bits(bits));
        let v = verify_private_map_key(&pmk, app, key, &user, &room, now).unwrap();
        prop_assert_eq!(v.privileges().bits(), bits);
        prop_assert_eq!(&v.record.room, &room);
        prop_assert_eq!(v.record.account, user);
    }
}
