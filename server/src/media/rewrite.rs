//! Forwarding logic with no I/O: sequence/timestamp rewriting and keyframe-request limiting.

use std::time::{Duration, Instant};

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
                let ticks = ((elapsed.as_secs_f64() * f64::from(clock_rate)) as u64).max(1);
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
}
