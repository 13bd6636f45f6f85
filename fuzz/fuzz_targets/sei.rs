//! SEI messages in received H.264 access units (`rtcroom_pipelines::sei`): whatever arrives,
//! parsing never panics; and a message put into the access unit comes back out of it.
//!
//! The first byte chooses the form: even parses the rest as Annex B and as AVC (4-byte
//! lengths); odd takes the next byte as a payload size and puts a TRTC message of that many
//! of the following bytes into the rest as an access unit, which must then parse to at
//! least that message (the rest may hold SEI units of its own, before or after).
//!
//! The module is included as a file (it uses only `std`), so the fuzz build needs no
//! GStreamer.

#![no_main]

#[allow(dead_code)]
#[path = "../../pipelines/src/sei.rs"]
mod sei;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = sei::parse_annexb(rest);
        for n in 1..=4 {
            let _ = sei::parse_avc(rest, n);
        }
        return;
    }
    let Some((&size, rest)) = rest.split_first() else {
        return;
    };
    let size = usize::from(size).min(rest.len());
    let (payload, au) = rest.split_at(size);
    if payload.is_empty() {
        return;
    }
    let message = sei::SeiMessage {
        payload_type: sei::PAYLOAD_TRTC,
        data: payload.to_vec(),
    };
    let out = sei::insert_annexb(au, &sei::encode_nal(std::slice::from_ref(&message)));
    assert!(
        sei::parse_annexb(&out).contains(&message),
        "the inserted message is found again"
    );
});
