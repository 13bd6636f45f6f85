//! The admin API's request checks: credentials (bearer token or HMAC signature with its
//! timestamp window), the replay cache, and the action + JSON body parser.
//!
//! Input: one flags byte, then `<action>\n<body>`. Flags: bit 0 sends the right bearer
//! token, bit 1 signs the request with the right key, bits 2.. skew the signed timestamp
//! from the server clock (37 s a step, so some are outside the 300 s window).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rtcroom_server::admin::{
    AdminRequest, Credential, MAX_REMOVE_USERS, MAX_SKEW_S, ReplayCache, ReplayRefusal,
    admin_signature, check_credentials, parse_request,
};
use rtcroom_server::config::AdminConfig;
use rtcroom_server::registry::AdminOp;

const NOW: u64 = 1_700_000_000;
const APP: u32 = 1_400_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (action, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    // Header values and path segments are text.
    let action = String::from_utf8_lossy(action);

    let cfg = AdminConfig {
        token: Some("tok".into()),
        hmac_key: Some("key".into()),
    };
    let bearer = (flags & 1 == 1).then_some("Bearer tok");
    let skew = u64::from(flags >> 2) * 37;
    let ts = NOW + skew;
    let signature = admin_signature("key", ts, &action, body);
    let (ts_text, sig) = if flags & 2 == 2 {
        (Some(ts.to_string()), Some(signature.clone()))
    } else {
        // Something else in the headers: the body's start as the signature.
        (
            Some(NOW.to_string()),
            Some(String::from_utf8_lossy(&body[..body.len().min(44)]).into_owned()),
        )
    };
    let credential = check_credentials(
        &cfg,
        bearer,
        ts_text.as_deref(),
        sig.as_deref(),
        &action,
        body,
        NOW,
    );
    match (bearer.is_some(), flags & 2 == 2) {
        (true, _) => assert_eq!(credential, Some(Credential::Token)),
        (false, true) => {
            let expected = (skew <= MAX_SKEW_S).then(|| Credential::Signed {
                timestamp: ts,
                signature: signature.clone(),
            });
            assert_eq!(credential, expected);
        }
        (false, false) => assert_eq!(credential, None, "a forged signature was accepted"),
    }
    // A signed request is admitted once.
    if let Some(Credential::Signed {
        timestamp,
        signature,
    }) = &credential
    {
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.admit(signature, *timestamp, NOW), Ok(()));
        assert_eq!(
            cache.admit(signature, *timestamp, NOW + 1),
            Err(ReplayRefusal::Replayed)
        );
        assert_eq!(cache.len(), 1);
    }

    let Ok(AdminRequest { key, op }) = parse_request(&action, body, |app| app == APP) else {
        return;
    };
    assert_eq!(key.sdk_app_id, APP);
    match action.as_ref() {
        "DismissRoom" | "RemoveUser" => assert!(key.room_id.as_numeric().is_some()),
        "DismissRoomByStrRoomId" | "RemoveUserByStrRoomId" => assert!(key.room_id.is_string()),
        "DescribeRoomInfo" => {}
        other => panic!("unknown action {other:?} accepted"),
    }
    match op {
        AdminOp::Remove(users) => {
            assert!(action.starts_with("RemoveUser"));
            assert!((1..=MAX_REMOVE_USERS).contains(&users.len()));
        }
        AdminOp::Dismiss => assert!(action.starts_with("DismissRoom")),
        AdminOp::Describe => assert_eq!(action, "DescribeRoomInfo"),
    }
});
