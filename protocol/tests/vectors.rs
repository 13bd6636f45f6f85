//! The official tls-sig-api-v2 vectors (`tests/data/usersig-official.json`, copied from
//! shared/vectors): every one verifies at its own `time`, and each is refused after expiry and
//! under another key, app, user or room.

use rtcroom_protocol::RoomId;
use rtcroom_protocol::usersig::{
    Privilege, Privileges, SigError, verify_private_map_key, verify_user_sig,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    kind: String,
    sdk_app_id: u64,
    secret_key: String,
    user_id: String,
    time: u64,
    expire: u64,
    room_id: Option<serde_json::Value>,
    privilege_map: Option<u8>,
    user_sig: String,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/usersig-official.json");
    serde_json::from_str(text).expect("vector file parses")
}

fn room_of(v: &Vector) -> Option<RoomId> {
    match (v.kind.as_str(), &v.room_id) {
        ("privateMapKey", Some(r)) => Some(RoomId::from_json(r, false).unwrap()),
        ("privateMapKeyStringRoom", Some(r)) => Some(RoomId::from_json(r, true).unwrap()),
        ("usersig", None) => None,
        (k, r) => panic!("unexpected vector kind {k} with room {r:?}"),
    }
}

/// Verify a vector as its kind says: a UserSig as a UserSig, a PrivateMapKey against its room.
fn check(
    v: &Vector,
    app: u64,
    key: &str,
    user: &str,
    room: Option<&RoomId>,
    now: u64,
) -> Result<(), SigError> {
    match room {
        None => verify_user_sig(&v.user_sig, app, key, user, now).map(|_| ()),
        Some(room) => verify_private_map_key(&v.user_sig, app, key, user, room, now).map(|_| ()),
    }
}

#[test]
fn all_24_vectors_are_present() {
    let vs = vectors();
    assert_eq!(vs.len(), 24);
    assert_eq!(vs.iter().filter(|v| v.kind == "usersig").count(), 8);
}

#[test]
fn every_vector_verifies_at_its_time_and_until_expiry() {
    for v in vectors() {
        let room = room_of(&v);
        for now in [v.time, v.time + v.expire] {
            check(
                &v,
                v.sdk_app_id,
                &v.secret_key,
                &v.user_id,
                room.as_ref(),
                now,
            )
            .unwrap_or_else(|e| panic!("{} {} at {now}: {e}", v.kind, v.user_id));
        }
        // Every vector is also a valid UserSig for its user.
        let t =
            verify_user_sig(&v.user_sig, v.sdk_app_id, &v.secret_key, &v.user_id, v.time).unwrap();
        assert_eq!(t.time, v.time);
        assert_eq!(t.expire, v.expire);
        assert_eq!(t.userbuf.is_some(), room.is_some());
    }
}

#[test]
fn private_map_keys_carry_their_privileges() {
    for v in vectors() {
        let Some(room) = room_of(&v) else { continue };
        let pmk = verify_private_map_key(
            &v.user_sig,
            v.sdk_app_id,
            &v.secret_key,
            &v.user_id,
            &room,
            v.time,
        )
        .unwrap();
        let bits = v.privilege_map.unwrap();
        assert_eq!(pmk.privileges(), Privileges::from_bits(bits));
        assert_eq!(pmk.record.expire_at as u64, v.time + v.expire);
        assert_eq!(pmk.record.account, v.user_id);
        assert_eq!(pmk.record.room, room);
        assert!(pmk.require(Privilege::EnterRoom).is_ok());
        if bits == 42 {
            // 42 = enter + receive audio + receive video: no sending.
            for p in [
                Privilege::SendAudio,
                Privilege::SendVideo,
                Privilege::CreateRoom,
            ] {
                assert_eq!(pmk.require(p).unwrap_err().extra_code(), -100006, "{p:?}");
            }
            assert!(pmk.require(Privilege::ReceiveVideo).is_ok());
        }
    }
}

#[test]
fn every_vector_is_refused_when_anything_is_wrong() {
    for v in vectors() {
        let room = room_of(&v);
        let r = room.as_ref();
        let code = |res: Result<(), SigError>| res.unwrap_err().extra_code();
        let (app, key, user, t) = (
            v.sdk_app_id,
            v.secret_key.as_str(),
            v.user_id.as_str(),
            v.time,
        );
        // Expired one second after time + expire.
        assert_eq!(code(check(&v, app, key, user, r, t + v.expire + 1)), 70001);
        // Another key.
        assert_eq!(code(check(&v, app, "wrong-key", user, r, t)), 70009);
        let mut flipped = key.to_owned().into_bytes();
        flipped[0] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(code(check(&v, app, &flipped, user, r, t)), 70009);
        // Another app.
        assert_eq!(code(check(&v, app + 1, key, user, r, t)), 70014);
        // Another user.
        assert_eq!(code(check(&v, app, key, "someone_else", r, t)), 70013);
        // User ids are case-sensitive.
        let upper = user.to_uppercase();
        if upper != user {
            assert_eq!(code(check(&v, app, key, &upper, r, t)), 70013);
        }
        if let Some(room) = r {
            // Another room, and the same number/text as the other room kind.
            let other = match room.as_numeric() {
                Some(n) => RoomId::numeric(n + 1).unwrap(),
                None => RoomId::string("another-room").unwrap(),
            };
            assert_eq!(code(check(&v, app, key, user, Some(&other), t)), -102011);
            let twin = match room.as_numeric() {
                Some(n) => RoomId::string(&n.to_string()).unwrap(),
                None => RoomId::parse("10001", false).unwrap(),
            };
            assert_eq!(code(check(&v, app, key, user, Some(&twin), t)), -102011);
        } else {
            // A plain UserSig is not a PrivateMapKey.
            let room = RoomId::numeric(10001).unwrap();
            assert_eq!(
                verify_private_map_key(&v.user_sig, app, key, user, &room, t)
                    .unwrap_err()
                    .extra_code(),
                -100006
            );
        }
    }
}

#[test]
fn numeric_and_string_10001_are_different_rooms() {
    let v = vectors()
        .into_iter()
        .find(|v| v.kind == "privateMapKey" && v.room_id == Some(serde_json::json!(10001)))
        .expect("the 10001 vector");
    let numeric = RoomId::parse("10001", false).unwrap();
    let string = RoomId::parse("10001", true).unwrap();
    assert!(
        verify_private_map_key(
            &v.user_sig,
            v.sdk_app_id,
            &v.secret_key,
            &v.user_id,
            &numeric,
            v.time
        )
        .is_ok()
    );
    assert!(
        verify_private_map_key(
            &v.user_sig,
            v.sdk_app_id,
            &v.secret_key,
            &v.user_id,
            &string,
            v.time
        )
        .is_err()
    );
}
