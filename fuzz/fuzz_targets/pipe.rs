//! The node-to-node media pipe's wire form (`decode_pipe_frame`): whatever arrives from the
//! other node, decoding never panics; a frame that decodes encodes back to the same bytes
//! (the form is canonical), and what it decodes to is within the documented bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rtcroom_protocol::signal::MediaKind;
use rtcroom_server::media::pipe::{MAX_PIPE_LAYERS, MAX_PIPE_PAYLOAD, PIPE_HEADER};
use rtcroom_server::media::{decode_pipe_frame, encode_pipe_frame};

fuzz_target!(|data: &[u8]| {
    let Ok((tag, packet)) = decode_pipe_frame(data) else {
        return;
    };
    assert_eq!(encode_pipe_frame(tag, &packet), data, "not canonical");
    assert_eq!(packet.kind == MediaKind::Video, packet.codec.is_some());
    assert!(packet.layer < packet.layers && packet.layers <= MAX_PIPE_LAYERS);
    assert!(packet.clock_rate > 0);
    assert!(!packet.payload.is_empty() && packet.payload.len() <= MAX_PIPE_PAYLOAD);
    assert_eq!(data.len(), PIPE_HEADER + packet.payload.len());
});
