//! The signalling envelope decoder: every WebSocket text frame a client sends goes through
//! `decode_client`, and a refused one through `request_id` for the error reply's id.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rtcroom_protocol::signal::{
    ClientMessage, MAX_MESSAGE_BYTES, decode_client, decode_server, encode, request_id,
};

fuzz_target!(|frame: &[u8]| {
    let id = request_id(frame);
    match decode_client(frame) {
        Ok(envelope) => {
            // The reply to a decoded frame and the error reply name the same request.
            assert_eq!(id, envelope.id, "request_id disagrees with decode_client");
            if let ClientMessage::Join(join) = &envelope.msg {
                let _ = join.room();
                let _ = join.effective_role();
            }
            // What decodes, encodes and decodes to the same message.
            let again = encode(&envelope);
            if again.len() <= MAX_MESSAGE_BYTES {
                let back = decode_client(again.as_bytes()).expect("an encoded envelope decodes");
                assert_eq!(back, envelope, "round trip changed the envelope");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The client side (bots, CLI) reads server frames with the same kind of decoder.
    let _ = decode_server(frame);
});
