//! H.264 SEI messages carried in the video (TRTC's `sendSEIMessage` / `sei-message`).
//!
//! Sending: a message waits in a [`SeiQueue`] until the next encoded access unit, where an
//! SEI NAL unit (type 6) is put in front of the first slice (H.264 7.4.1.2.3: SEI precedes
//! the first VCL NAL unit of its access unit), so it leaves with that frame. Receiving: each
//! depayloaded access unit is scanned for SEI NAL units, in Annex B (start codes) or AVC
//! (4-byte lengths) form, and their messages of TRTC's payload types (5, user data
//! unregistered, and 243) are handed on.
//!
//! Everything here is plain byte work; the parser takes network input and never panics on it
//! (truncated or malformed units are skipped). Only `std`: the fuzz target includes this
//! file as it is.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// H.264 `user_data_unregistered` (D.1.6): a 16-byte UUID, then the application's bytes.
pub const PAYLOAD_USER_DATA_UNREGISTERED: u8 = 5;
/// TRTC's default SEI payload type (a reserved type its SDKs use for application data).
pub const PAYLOAD_TRTC: u8 = 243;
/// Largest message (TRTC: 1 KB).
pub const MAX_BYTES: usize = 1024;
/// Messages waiting for a frame at most; older ones are dropped (a stream whose encoder
/// stalled must not grow memory).
pub const MAX_QUEUED: usize = 64;
/// x264's own `user_data_unregistered` (its version and options, on the first keyframe):
/// not an application message.
const X264_UUID: [u8; 16] = [
    0xdc, 0x45, 0xe9, 0xbd, 0xe6, 0xd9, 0x48, 0xb7, 0x96, 0x2c, 0xd8, 0x20, 0xd9, 0x23, 0xee, 0xef,
];

/// One SEI message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeiMessage {
    /// The SEI payload type: [`PAYLOAD_TRTC`] or [`PAYLOAD_USER_DATA_UNREGISTERED`].
    pub payload_type: u8,
    /// The payload (for type 5: the 16-byte UUID first).
    pub data: Vec<u8>,
}

impl SeiMessage {
    /// Check a message an application wants to send: type 5 or 243, 1 byte to 1 KB, and for
    /// type 5 at least the 16-byte UUID.
    pub fn check(payload_type: u8, data: &[u8]) -> Result<(), String> {
        if payload_type != PAYLOAD_TRTC && payload_type != PAYLOAD_USER_DATA_UNREGISTERED {
            return Err(format!(
                "seiPayloadType must be {PAYLOAD_USER_DATA_UNREGISTERED} or {PAYLOAD_TRTC}, got {payload_type}"
            ));
        }
        if data.is_empty() || data.len() > MAX_BYTES {
            return Err(format!(
                "an SEI message is 1 to {MAX_BYTES} bytes, got {}",
                data.len()
            ));
        }
        if payload_type == PAYLOAD_USER_DATA_UNREGISTERED && data.len() < 16 {
            return Err("an SEI message of payload type 5 starts with a 16-byte UUID".into());
        }
        Ok(())
    }
}

/// Receives the SEI messages of a remote stream's video (on a GStreamer streaming thread:
/// hand them on and return).
pub type SeiHandler = Arc<dyn Fn(SeiMessage) + Send + Sync>;

/// Messages waiting for the next encoded frame. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct SeiQueue(Arc<Mutex<VecDeque<SeiMessage>>>);

impl SeiQueue {
    /// Queue a message for the next frame; the oldest is dropped beyond [`MAX_QUEUED`].
    pub fn push(&self, message: SeiMessage) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(message);
    }

    /// Everything queued, oldest first.
    pub fn take(&self) -> Vec<SeiMessage> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// One SEI NAL unit (header byte included, no start code) carrying `messages`, with
/// emulation prevention applied.
pub fn encode_nal(messages: &[SeiMessage]) -> Vec<u8> {
    let mut rbsp = Vec::new();
    for m in messages {
        put_ff_coded(&mut rbsp, usize::from(m.payload_type));
        put_ff_coded(&mut rbsp, m.data.len());
        rbsp.extend_from_slice(&m.data);
    }
    rbsp.push(0x80); // rbsp_trailing_bits
    let mut nal = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 1);
    nal.push(0x06);
    let mut zeros = 0;
    for b in rbsp {
        if zeros >= 2 && b <= 3 {
            nal.push(0x03);
            zeros = 0;
        }
        nal.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    nal
}

fn put_ff_coded(out: &mut Vec<u8>, mut v: usize) {
    while v >= 255 {
        out.push(0xff);
        v -= 255;
    }
    // v < 255 here.
    out.push(v as u8);
}

/// An Annex B access unit with the SEI NAL unit `nal` put in front of its first slice (or at
/// the end when it has none).
pub fn insert_annexb(au: &[u8], nal: &[u8]) -> Vec<u8> {
    let at = annexb_units(au)
        .find(|u| matches!(u.nal.first().map(|h| h & 0x1f), Some(1..=5)))
        .map_or(au.len(), |u| u.start);
    let mut out = Vec::with_capacity(au.len() + nal.len() + 4);
    out.extend_from_slice(&au[..at]);
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(nal);
    out.extend_from_slice(&au[at..]);
    out
}

/// The application SEI messages (types 5 and 243; not x264's own) of an access unit in
/// Annex B form.
pub fn parse_annexb(au: &[u8]) -> Vec<SeiMessage> {
    let mut out = Vec::new();
    for u in annexb_units(au) {
        sei_messages(u.nal, &mut out);
    }
    out
}

/// The application SEI messages of an access unit in AVC form (`length_size`-byte
/// big-endian lengths, 1 to 4).
pub fn parse_avc(au: &[u8], length_size: usize) -> Vec<SeiMessage> {
    let mut out = Vec::new();
    if !(1..=4).contains(&length_size) {
        return out;
    }
    let mut rest = au;
    while rest.len() >= length_size {
        let (len_bytes, tail) = rest.split_at(length_size);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let Some(nal) = tail.get(..len) else {
            break; // truncated
        };
        sei_messages(nal, &mut out);
        rest = &tail[len..];
    }
    out
}

struct Unit<'a> {
    /// Where its start code begins.
    start: usize,
    nal: &'a [u8],
}

/// The NAL units of an Annex B byte stream.
fn annexb_units(data: &[u8]) -> impl Iterator<Item = Unit<'_>> {
    // Start codes: positions of 00 00 01, each with where its (3- or 4-byte) code begins.
    let mut codes = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let start = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            codes.push((start, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = codes
        .iter()
        .skip(1)
        .map(|(s, _)| *s)
        .chain(std::iter::once(data.len()))
        .collect();
    codes
        .into_iter()
        .zip(ends)
        .filter(|((_, body), end)| body < end)
        .map(move |((start, body), end)| Unit {
            start,
            nal: &data[body..end],
        })
}

/// Append the application messages of one NAL unit, if it is an SEI unit.
fn sei_messages(nal: &[u8], out: &mut Vec<SeiMessage>) {
    let Some((&header, body)) = nal.split_first() else {
        return;
    };
    if header & 0x1f != 6 {
        return;
    }
    // Remove emulation prevention: 00 00 03 → 00 00.
    let mut rbsp = Vec::with_capacity(body.len());
    let mut zeros = 0;
    for &b in body {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        rbsp.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    let mut rest = &rbsp[..];
    // more_rbsp_data: something left besides the trailing bits (0x80, then zero bytes).
    while rest.first().is_some_and(|b| *b != 0x80) {
        let Some((payload_type, r)) = take_ff_coded(rest) else {
            return;
        };
        let Some((size, r)) = take_ff_coded(r) else {
            return;
        };
        let Some(payload) = r.get(..size) else {
            return; // truncated
        };
        rest = &r[size..];
        let application = match u8::try_from(payload_type) {
            Ok(PAYLOAD_TRTC) => true,
            Ok(PAYLOAD_USER_DATA_UNREGISTERED) => payload.len() >= 16 && payload[..16] != X264_UUID,
            _ => false,
        };
        if application {
            out.push(SeiMessage {
                // The match above only accepts values that fit.
                payload_type: payload_type as u8,
                data: payload.to_vec(),
            });
        }
    }
}

fn take_ff_coded(data: &[u8]) -> Option<(usize, &[u8])> {
    let mut v = 0usize;
    for (i, &b) in data.iter().enumerate() {
        v = v.checked_add(usize::from(b))?;
        if b != 0xff {
            return Some((v, &data[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload_type: u8, data: &[u8]) -> SeiMessage {
        SeiMessage {
            payload_type,
            data: data.to_vec(),
        }
    }

    /// An access unit as x264 writes it: AUD, SPS, PPS, x264's SEI, IDR slice.
    fn x264_au() -> Vec<u8> {
        let mut au = vec![0, 0, 0, 1, 0x09, 0x10];
        au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        let mut banner = X264_UUID.to_vec();
        banner.extend_from_slice(b"x264 - core 164");
        au.extend_from_slice(&[0, 0, 1]);
        au.extend_from_slice(&encode_nal(&[msg(5, &banner)]));
        au.extend_from_slice(&[0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33]);
        au
    }

    #[test]
    fn messages_go_in_front_of_the_first_slice_and_come_back_out() {
        let au = x264_au();
        // x264's own SEI is not an application message.
        assert!(parse_annexb(&au).is_empty());
        let mut uuid_msg = vec![7u8; 16];
        uuid_msg.extend_from_slice(b"hello");
        let sent = vec![msg(243, b"frame 42"), msg(5, &uuid_msg)];
        let out = insert_annexb(&au, &encode_nal(&sent));
        assert_eq!(parse_annexb(&out), sent);
        // Right before the IDR slice, after the parameter sets and x264's SEI.
        let slice_at = out.windows(4).position(|w| w == [0, 0, 1, 0x65]).unwrap();
        let ours_at = out
            .windows(5)
            .position(|w| w == [0, 0, 0, 1, 0x06])
            .unwrap();
        assert!(ours_at > out.windows(4).position(|w| w == [0, 0, 1, 0x68]).unwrap());
        assert!(ours_at < slice_at);
        assert_eq!(out.len(), au.len() + 4 + encode_nal(&sent).len());
    }

    #[test]
    fn emulation_prevention_and_long_sizes_round_trip() {
        // Bytes that look like start codes, and a payload over 255 bytes (0xff-coded size).
        let mut data = vec![0, 0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 2];
        data.extend((0..=255u8).cycle().take(1000));
        data.extend_from_slice(&[0, 0]);
        let m = msg(243, &data);
        let nal = encode_nal(std::slice::from_ref(&m));
        assert!(
            !nal.windows(3).any(|w| w == [0, 0, 1] || w == [0, 0, 0]),
            "no start code inside the unit"
        );
        let mut au = vec![0, 0, 0, 1];
        au.extend_from_slice(&nal);
        au.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x9a]);
        assert_eq!(parse_annexb(&au), std::slice::from_ref(&m));
        // The same unit in AVC form.
        let mut avc = (nal.len() as u32).to_be_bytes().to_vec();
        avc.extend_from_slice(&nal);
        avc.extend_from_slice(&[0, 0, 0, 2, 0x41, 0x9a]);
        assert_eq!(parse_avc(&avc, 4), [m]);
    }

    #[test]
    fn an_access_unit_without_a_slice_gets_the_unit_at_its_end() {
        let au = vec![0, 0, 0, 1, 0x09, 0x10];
        let out = insert_annexb(&au, &encode_nal(&[msg(243, b"x")]));
        assert_eq!(parse_annexb(&out), [msg(243, b"x")]);
        assert!(out.starts_with(&au));
    }

    #[test]
    fn other_payload_types_and_malformed_units_are_skipped_without_panicking() {
        // A recovery point SEI (type 6): not an application message.
        let au = [0, 0, 1, 0x06, 0x06, 0x01, 0x84, 0x80];
        assert!(parse_annexb(&au).is_empty());
        // Truncated: a size larger than what follows, an unfinished 0xff run, lengths
        // pointing past the end, garbage.
        for bad in [
            &[0u8, 0, 1, 0x06, 243, 200, 1, 2][..],
            &[0, 0, 1, 0x06, 0xff, 0xff][..],
            &[0, 0, 1][..],
            &[0, 0, 1, 0x06][..],
            &[][..],
        ] {
            assert!(parse_annexb(bad).is_empty(), "{bad:?}");
            assert!(parse_avc(bad, 4).is_empty(), "{bad:?}");
        }
        assert!(parse_avc(&[0xff, 0xff, 0xff, 0xff, 6], 4).is_empty());
        assert!(parse_avc(&[0, 0, 0, 1, 6], 0).is_empty());
        // Every prefix of a good unit parses to nothing or to the message, never panics.
        let mut au = vec![0, 0, 0, 1];
        au.extend_from_slice(&encode_nal(&[msg(243, &[0xab; 300])]));
        for n in 0..au.len() {
            let _ = parse_annexb(&au[..n]);
            let _ = parse_avc(&au[..n], 4);
        }
    }

    #[test]
    fn what_an_application_may_send() {
        assert!(SeiMessage::check(243, b"x").is_ok());
        assert!(SeiMessage::check(5, &[0; 16]).is_ok());
        assert!(SeiMessage::check(5, &[0; 15]).is_err());
        assert!(SeiMessage::check(6, b"x").is_err());
        assert!(SeiMessage::check(243, b"").is_err());
        assert!(SeiMessage::check(243, &[0; 1025]).is_err());
        assert!(SeiMessage::check(243, &[0; 1024]).is_ok());
    }

    #[test]
    fn the_queue_keeps_the_newest_messages() {
        let q = SeiQueue::default();
        for i in 0..(MAX_QUEUED + 3) {
            q.push(msg(243, &[i as u8]));
        }
        let all = q.take();
        assert_eq!(all.len(), MAX_QUEUED);
        assert_eq!(all[0].data, [3]);
        assert!(q.is_empty());
    }
}
