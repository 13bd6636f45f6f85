//! Reconnect backoff and heartbeat scheduling: plain values that take `now`.
//!
//! TRTC v4 retries the signalling WebSocket up to 30 times, waiting Fibonacci seconds
//! 1, 2, 3, 5, 8 and then 13 s for every later attempt (reference §2). [`ReconnectPolicy`]
//! gives that schedule, with the unit (one second) and the attempt count configurable so tests
//! can run the same schedule in milliseconds.
//!
//! [`Heartbeat`] decides when the next heartbeat is due (every 2 s after joining) and when a
//! silent connection must be declared dead.

use std::time::{Duration, Instant};

/// TRTC v4's attempt count for the signalling channel (`Hk=30`).
pub const DEFAULT_RECONNECT_ATTEMPTS: u32 = 30;
/// One step of the Fibonacci schedule.
pub const DEFAULT_BACKOFF_UNIT: Duration = Duration::from_secs(1);
/// The schedule in units: attempt 1 waits 1, attempt 2 waits 2, ..., attempt 6 and later 13.
pub const BACKOFF_STEPS: [u32; 6] = [1, 2, 3, 5, 8, 13];
/// TRTC's heartbeat interval after a successful join.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Missed heartbeat intervals (no frame at all from the server) before the connection is
/// declared dead. The server replies to every heartbeat, so three silent intervals (6 s) mean
/// the socket is half-open or the server is gone.
pub const DEFAULT_MISSED_HEARTBEATS: u32 = 3;

/// How signalling reconnects: Fibonacci delays in `unit`s, at most `max_attempts` attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Attempts before giving up with SIGNAL_CHANNEL_RECONNECTION_FAILED (TRTC: 30).
    pub max_attempts: u32,
    /// Length of one step of the schedule (TRTC: 1 s).
    pub unit: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            max_attempts: DEFAULT_RECONNECT_ATTEMPTS,
            unit: DEFAULT_BACKOFF_UNIT,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (1-based), or `None` once the attempts are spent.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        let idx = (attempt as usize - 1).min(BACKOFF_STEPS.len() - 1);
        Some(self.unit.saturating_mul(BACKOFF_STEPS[idx]))
    }
}

/// What the heartbeat wants done now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing is due; wake up at [`Heartbeat::next_deadline`].
    Wait,
    /// Send a heartbeat now.
    Send,
    /// Nothing has been heard for too long: the connection is dead.
    Dead,
}

/// Heartbeat scheduling and liveness for one joined connection.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    interval: Duration,
    dead_after: Duration,
    next_send: Instant,
    last_heard: Instant,
}

impl Heartbeat {
    /// Start after a join at `now`: first heartbeat one interval later; dead after
    /// `missed` intervals without any frame from the server.
    pub fn new(interval: Duration, missed: u32, now: Instant) -> Self {
        Heartbeat {
            interval,
            dead_after: interval.saturating_mul(missed.max(1)),
            next_send: now + interval,
            last_heard: now,
        }
    }

    /// The interval between heartbeats.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A frame (reply or event) arrived from the server at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// What to do at `now`. A returned [`HeartbeatAction::Send`] schedules the next one.
    pub fn poll(&mut self, now: Instant) -> HeartbeatAction {
        if now.saturating_duration_since(self.last_heard) >= self.dead_after {
            return HeartbeatAction::Dead;
        }
        if now >= self.next_send {
            // Skip intervals missed while the thread was busy instead of sending a burst.
            while self.next_send <= now {
                self.next_send += self.interval;
            }
            return HeartbeatAction::Send;
        }
        HeartbeatAction::Wait
    }

    /// When [`Heartbeat::poll`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        self.next_send.min(self.last_heard + self.dead_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_fibonacci_capped_at_13() {
        let p = ReconnectPolicy::default();
        let secs: Vec<u64> = (1..=9).map(|a| p.delay(a).unwrap().as_secs()).collect();
        assert_eq!(secs, [1, 2, 3, 5, 8, 13, 13, 13, 13]);
        assert_eq!(p.delay(30), Some(Duration::from_secs(13)));
        assert_eq!(p.delay(31), None);
        assert_eq!(p.delay(0), None);
        let total: u64 = (1..=30).map(|a| p.delay(a).unwrap().as_secs()).sum();
        assert_eq!(total, 1 + 2 + 3 + 5 + 8 + 13 * 25);
    }

    #[test]
    fn backoff_unit_and_attempts_are_configurable() {
        let p = ReconnectPolicy {
            max_attempts: 3,
            unit: Duration::from_millis(10),
        };
        assert_eq!(p.delay(1), Some(Duration::from_millis(10)));
        assert_eq!(p.delay(2), Some(Duration::from_millis(20)));
        assert_eq!(p.delay(3), Some(Duration::from_millis(30)));
        assert_eq!(p.delay(4), None);
        let none = ReconnectPolicy {
            max_attempts: 0,
            unit: Duration::from_secs(1),
        };
        assert_eq!(none.delay(1), None);
    }

    #[test]
    fn heartbeat_every_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut hb = Heartbeat::new(DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MISSED_HEARTBEATS, t0);
        assert_eq!(hb.next_deadline(), t0 + 2 * s);
        assert_eq!(hb.poll(t0 + s), HeartbeatAction::Wait);
        assert_eq!(hb.poll(t0 + 2 * s), HeartbeatAction::Send);
        assert_eq!(hb.poll(t0 + 2 * s), HeartbeatAction::Wait);
        hb.heard(t0 + 2 * s);
        assert_eq!(hb.next_deadline(), t0 + 4 * s);
        assert_eq!(hb.poll(t0 + 4 * s), HeartbeatAction::Send);
        hb.heard(t0 + 4 * s);
        // A late wake-up sends once, not a burst.
        assert_eq!(hb.poll(t0 + 9 * s), HeartbeatAction::Send);
        assert_eq!(hb.poll(t0 + 9 * s), HeartbeatAction::Wait);
        assert_eq!(hb.next_deadline(), t0 + 10 * s);
    }

    #[test]
    fn heartbeat_declares_silence_dead() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut hb = Heartbeat::new(2 * s, 3, t0);
        assert_eq!(hb.poll(t0 + 2 * s), HeartbeatAction::Send);
        assert_eq!(hb.poll(t0 + 4 * s), HeartbeatAction::Send);
        assert_eq!(hb.next_deadline(), t0 + 6 * s);
        assert_eq!(hb.poll(t0 + 6 * s), HeartbeatAction::Dead);
        // Hearing anything keeps it alive; old timestamps do not move it back.
        let mut hb = Heartbeat::new(2 * s, 3, t0);
        hb.heard(t0 + 5 * s);
        hb.heard(t0 + s);
        assert_eq!(hb.poll(t0 + 6 * s), HeartbeatAction::Send);
        assert_eq!(hb.poll(t0 + 10 * s), HeartbeatAction::Send);
        assert_eq!(hb.poll(t0 + 11 * s), HeartbeatAction::Dead);
    }
}
