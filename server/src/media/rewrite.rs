//! Forwarding logic with no I/O: sequence/timestamp rewriting and keyframe-request limiting.

use std::time::{Duration, Instant};

use rtcroom_protocol::signal::VideoCodec;

/// Rewrites a forwarded stream's RTP sequence numbers and timestamps so that a subscriber sees
/// one continuous stream even when the source changes (a publisher that restarts or
/// re-publishes gets a new SSRC, new sequence numbers and a new timestamp base).
///
/// The first source starts the output at its own sequence number modulo 2^16 (so the SRTP
/// rollover counter starts at 0, as receivers expect). On a source change the output
/// continues at the last sequence number + 1 and the last timestamp advanced by the wall
/// time that passed, so decoders see neither a gap nor a jump back.
#[derive(Debug, Clone, Default)]
pub struct SeqRewriter {
    state: Option<RewriteState>,
}

#[derive(Debug, Clone)]
struct RewriteState {
    source: u64,
    seq_offset: u64,
    ts_offset: u32,
    last_out_seq: u64,
    last_out_ts: u32,
    last_out_at: Instant,
}

/// One rewritten packet's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended output sequence number.
    pub seq: u64,
    /// Output RTP timestamp.
    pub ts: u32,
}

impl SeqRewriter {
    /// Map an incoming packet of `source` (any id that changes when the source restarts) with
    /// extended sequence number `seq` and RTP time `ts`, arriving at `now`, for a codec with
    /// `clock_rate` Hz.
    pub fn map(
        &mut self,
        source: u64,
        seq: u64,
        ts: u32,
        now: Instant,
        clock_rate: u32,
    ) -> Rewritten {
        let state = match &mut self.state {
            Some(s) if s.source == source => s,
            Some(s) => {
                // Continue after the last output: +1 sequence, + elapsed time in clock ticks.
                let elapsed = now.saturating_duration_since(s.last_out_at);
                // Whole ticks, in integers (a float product lands a tick short of exact
                // values); more than 2^64 ticks is beyond any pause.
                let ticks = (elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000)
                    .try_into()
                    .unwrap_or(u64::MAX)
                    .max(1);
                let next_seq = s.last_out_seq.wrapping_add(1);
                // Truncation to 32 bits is RTP's own timestamp wrap-around.
                let next_ts = s.last_out_ts.wrapping_add(ticks as u32);
                s.source = source;
                s.seq_offset = next_seq.wrapping_sub(seq);
                s.ts_offset = next_ts.wrapping_sub(ts);
                s
            }
            None => {
                let start = seq & 0xffff;
                self.state.insert(RewriteState {
                    source,
                    seq_offset: start.wrapping_sub(seq),
                    ts_offset: 0,
                    last_out_seq: start,
                    last_out_ts: ts,
                    last_out_at: now,
                })
            }
        };
        let out = Rewritten {
            seq: seq.wrapping_add(state.seq_offset),
            ts: ts.wrapping_add(state.ts_offset),
        };
        // Track the newest output (reordered packets keep their mapping but do not move it back).
        if out.seq > state.last_out_seq || state.last_out_seq.wrapping_sub(out.seq) > u64::MAX / 2 {
            state.last_out_seq = out.seq;
            state.last_out_ts = out.ts;
            state.last_out_at = now;
        }
        out
    }
}

/// At most one keyframe request per interval per stream, except a forced one (a new
/// subscriber gets its keyframe at once).
#[derive(Debug, Clone)]
pub struct KeyframeLimiter {
    interval: Duration,
    last: Option<Instant>,
}

/// Keyframe requests per stream: at most one a second.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);

impl Default for KeyframeLimiter {
    fn default() -> Self {
        KeyframeLimiter {
            interval: KEYFRAME_INTERVAL,
            last: None,
        }
    }
}

impl KeyframeLimiter {
    /// Whether to send a request now; records it when it returns true.
    pub fn allow(&mut self, now: Instant, force: bool) -> bool {
        let ok = force
            || self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if ok {
            self.last = Some(now);
        }
        ok
    }
}

/// Whether an RTP payload of `codec` starts a keyframe: for H.264 an IDR slice or the SPS
/// that leads one (alone, first in a STAP-A, or the first FU-A fragment; RFC 6184), for VP8
/// the first packet of a key frame (RFC 7741: S bit, partition 0, P bit clear). Reads only
/// what is there: a short or malformed payload is no keyframe.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    let is_key_nal = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    match codec {
        VideoCodec::H264 => match payload.first().map(|b| b & 0x1f) {
            Some(5 | 7) => true,
            // STAP-A: 16-bit size, then the NAL unit, for each.
            Some(24) => {
                let mut rest = payload.get(1..).unwrap_or_default();
                while let (Some(size), Some(&nal)) = (rest.get(..2), rest.get(2)) {
                    if is_key_nal(nal) {
                        return true;
                    }
                    let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                    rest = rest.get(2 + size..).unwrap_or_default();
                }
                false
            }
            // FU-A: the fragment header's start bit and the fragmented unit's type.
            Some(28) => payload
                .get(1)
                .is_some_and(|h| h & 0x80 != 0 && h & 0x1f == 5),
            _ => false,
        },
        VideoCodec::Vp8 => {
            let Some(&d) = payload.first() else {
                return false;
            };
            // Start of a partition (S), partition 0.
            if d & 0x10 == 0 || d & 0x07 != 0 {
                return false;
            }
            let mut at = 1;
            if d & 0x80 != 0 {
                // X: the extension byte, then PictureID (1 or 2 bytes), TL0PICIDX, TID/KEYIDX.
                let Some(&x) = payload.get(1) else {
                    return false;
                };
                at = 2;
                if x & 0x80 != 0 {
                    let Some(&pic) = payload.get(at) else {
                        return false;
                    };
                    at += if pic & 0x80 != 0 { 2 } else { 1 };
                }
                if x & 0x40 != 0 {
                    at += 1;
                }
                if x & 0x30 != 0 {
                    at += 1;
                }
            }
            // The VP8 payload header: P (inverse key frame flag) is bit 0.
            payload.get(at).is_some_and(|h| h & 0x01 == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_source_starts_below_2_16_and_keeps_deltas() {
        let t0 = Instant::now();
        let mut r = SeqRewriter::default();
        let a = r.map(1, 70_000, 1000, t0, 90_000);
        assert_eq!(a.seq, 70_000 & 0xffff);
        assert_eq!(a.ts, 1000);
        let b = r.map(1, 70_001, 4000, t0, 90_000);
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.ts, 4000);
        // Reordered packet maps consistently and does not move the state back.
        let c = r.map(1, 69_999, 900, t0, 90_000);
        assert_eq!(c.seq, a.seq - 1);
    }

    #[test]
    fn source_change_continues_the_stream() {
        let t0 = Instant::now();
        let mut r = SeqRewriter::default();
        for i in 0..10u64 {
            r.map(
                1,
                500 + i,
                (i * 3000) as u32,
                t0 + Duration::from_millis(33 * i),
                90_000,
            );
        }
        let last = r.map(1, 510, 30_000, t0 + Duration::from_millis(330), 90_000);
        // The publisher restarts: new SSRC, random sequence and timestamp base.
        let first_new = r.map(
            2,
            40_000,
            123_456_789,
            t0 + Duration::from_millis(430),
            90_000,
        );
        assert_eq!(first_new.seq, last.seq + 1);
        // 100 ms at 90 kHz.
        assert_eq!(first_new.ts, last.ts + 9000);
        let next = r.map(
            2,
            40_001,
            123_456_789 + 3000,
            t0 + Duration::from_millis(463),
            90_000,
        );
        assert_eq!(next.seq, last.seq + 2);
        assert_eq!(next.ts, last.ts + 12_000);
    }

    #[test]
    fn timestamps_wrap_like_rtp() {
        let t0 = Instant::now();
        let mut r = SeqRewriter::default();
        r.map(1, 1, u32::MAX - 10, t0, 48_000);
        let b = r.map(1, 2, 5, t0, 48_000);
        assert_eq!(b.ts, 5);
        let c = r.map(9, 77, 0, t0 + Duration::from_millis(20), 48_000);
        assert_eq!(c.seq, 3);
        assert_eq!(c.ts, 5 + 960);
    }

    #[test]
    fn keyframe_requests_limited_to_one_a_second_unless_forced() {
        let t0 = Instant::now();
        let mut l = KeyframeLimiter::default();
        assert!(l.allow(t0, false));
        assert!(!l.allow(t0 + Duration::from_millis(500), false));
        assert!(
            l.allow(t0 + Duration::from_millis(600), true),
            "new subscriber"
        );
        assert!(!l.allow(t0 + Duration::from_millis(1500), false));
        assert!(l.allow(t0 + Duration::from_millis(1600), false));
    }

    #[test]
    fn keyframe_starts_are_found_in_h264_and_vp8_payloads() {
        use super::starts_keyframe;
        let h264 = |p: &[u8]| starts_keyframe(VideoCodec::H264, p);
        // Single NAL units: IDR and SPS yes, a non-IDR slice and a PPS no.
        assert!(h264(&[0x65, 0x88]) && h264(&[0x67, 0x42]));
        assert!(!h264(&[0x41, 0x9a]) && !h264(&[0x68, 0xce]));
        // STAP-A holding SPS, PPS (how browsers and rtph264pay send them before an IDR).
        assert!(h264(&[
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce
        ]));
        // STAP-A of a PPS and an SEI only; a truncated one.
        assert!(!h264(&[0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x01, 0x06]));
        assert!(!h264(&[0x78, 0x00]) && !h264(&[0x78]));
        // A STAP-A whose second unit is the IDR.
        assert!(h264(&[0x78, 0x00, 0x01, 0x06, 0x00, 0x01, 0x65]));
        // FU-A: the first fragment of an IDR yes; a later one, or of a non-IDR slice, no.
        assert!(h264(&[0x7c, 0x85, 0x88]));
        assert!(!h264(&[0x7c, 0x05, 0x88]) && !h264(&[0x7c, 0x81, 0x9a]) && !h264(&[0x7c]));
        assert!(!h264(&[]));

        let vp8 = |p: &[u8]| starts_keyframe(VideoCodec::Vp8, p);
        // S=1, partition 0, no extension; P=0 (key frame) / P=1 (inter frame).
        assert!(vp8(&[0x10, 0x50]) && !vp8(&[0x10, 0x51]));
        // Not the start of the frame.
        assert!(!vp8(&[0x00, 0x50]) && !vp8(&[0x11, 0x50]));
        // X with a 15-bit PictureID (as rtpvp8pay and browsers send), then the header.
        assert!(vp8(&[0x90, 0x80, 0x81, 0x23, 0x50]));
        assert!(!vp8(&[0x90, 0x80, 0x81, 0x23, 0x51]));
        // X with a 7-bit PictureID, TL0PICIDX and TID.
        assert!(vp8(&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x50]));
        // Truncated descriptors.
        assert!(
            !vp8(&[0x90]) && !vp8(&[0x90, 0x80]) && !vp8(&[0x90, 0x80, 0x81, 0x23]) && !vp8(&[])
        );
    }
}
