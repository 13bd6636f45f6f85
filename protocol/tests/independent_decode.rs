//! Tickets we generate decode and check with an independent decoder written here from the
//! algorithm's description (flate2 + serde_json + hmac), not with our own verifier.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rtcroom_protocol::RoomId;
use rtcroom_protocol::usersig::{Privileges, gen_private_map_key, gen_user_sig};
use sha2::Sha256;
use std::io::Read;

const APP: u64 = 1_400_000_000;
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

/// Reverse the custom alphabet, inflate, parse.
fn independent_decode(ticket: &str) -> serde_json::Value {
    let std_b64: String = ticket
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let compressed = STANDARD
        .decode(std_b64)
        .expect("standard base64 after mapping");
    // A zlib stream (with header), not raw deflate.
    assert_eq!(compressed[0] & 0x0f, 8, "zlib CM=8 header");
    let mut json = String::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .read_to_string(&mut json)
        .expect("inflates");
    serde_json::from_str(&json).expect("JSON")
}

fn independent_sig(doc: &serde_json::Value, key: &str) -> String {
    let mut content = format!(
        "TLS.identifier:{}\nTLS.sdkappid:{}\nTLS.time:{}\nTLS.expire:{}\n",
        doc["TLS.identifier"].as_str().unwrap(),
        doc["TLS.sdkappid"].as_u64().unwrap(),
        doc["TLS.time"].as_u64().unwrap(),
        doc["TLS.expire"].as_u64().unwrap(),
    );
    if let Some(ub) = doc.get("TLS.userbuf") {
        content.push_str(&format!("TLS.userbuf:{}\n", ub.as_str().unwrap()));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(content.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn user_sig_decodes_independently() {
    let ticket = gen_user_sig(APP, KEY, "xiaojun", 15_552_000, 1_700_000_000);
    let doc = independent_decode(&ticket);
    assert_eq!(doc["TLS.ver"], "2.0");
    assert_eq!(doc["TLS.identifier"], "xiaojun");
    assert_eq!(doc["TLS.sdkappid"], APP);
    assert_eq!(doc["TLS.time"], 1_700_000_000u64);
    assert_eq!(doc["TLS.expire"], 15_552_000u64);
    assert!(doc.get("TLS.userbuf").is_none());
    // The official Python library's HMAC for the same inputs (reference §4.4).
    assert_eq!(
        doc["TLS.sig"],
        "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="
    );
    assert_eq!(doc["TLS.sig"], independent_sig(&doc, KEY).as_str());
}

#[test]
fn private_map_key_decodes_independently() {
    // Same inputs as the official Python vector: room 10000, all privileges.
    let room = RoomId::numeric(10000).unwrap();
    let ticket = gen_private_map_key(
        APP,
        KEY,
        "xiaojun",
        15_552_000,
        1_700_000_000,
        &room,
        Privileges::ALL,
    );
    let doc = independent_decode(&ticket);
    assert_eq!(
        doc["TLS.userbuf"],
        "AAAHeGlhb2p1blNyTgAAACcQZkE/AAAAAP8AAAAA"
    );
    assert_eq!(
        doc["TLS.sig"],
        "y9Avb5xwHgIgoABbGakLaE0xs+v/dLcIPegbWfcbRLI="
    );
    assert_eq!(doc["TLS.sig"], independent_sig(&doc, KEY).as_str());

    let room = RoomId::string("adbjkl").unwrap();
    let ticket = gen_private_map_key(
        APP,
        KEY,
        "xiaojun",
        15_552_000,
        1_700_000_000,
        &room,
        Privileges::ALL,
    );
    let doc = independent_decode(&ticket);
    assert_eq!(
        doc["TLS.userbuf"],
        "AQAHeGlhb2p1blNyTgAAAAAAZkE/AAAAAP8AAAAAAAZhZGJqa2w="
    );
    assert_eq!(
        doc["TLS.sig"],
        "3JrO3Pxr1r0w8ssGgqR3c1J+DJdHL0qe+iE9IUV0lTU="
    );
}
