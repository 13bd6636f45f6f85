//! `LinkHealth`: what to do when an uplink or downlink peer connection fails. Plain and
//! clock-free: the actor feeds it "connected" / "failed" and gets back an action.
//!
//! A failure (ICE/DTLS failed, the peer connection actor died, or a renegotiation that did
//! not connect) rebuilds the peer connection after a short delay that grows with each
//! consecutive failure; a connection that comes up resets the count. After
//! [`DEFAULT_MAX_REBUILDS`] consecutive failures the link gives up and the client reports
//! UPLINK_RECONNECTION_FAILED (0x4007) or DOWNLINK_RECONNECTION_FAILED (0x4008).

use std::time::Duration;

use rtcroom_protocol::{ErrorCode, RtcError};

/// Consecutive failed rebuilds before a link gives up.
pub const DEFAULT_MAX_REBUILDS: u32 = 3;
/// Delay before the first rebuild; the n-th waits n times this.
pub const DEFAULT_REBUILD_DELAY: Duration = Duration::from_millis(200);

/// Uplink (publishing) or downlink (subscribing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A published stream's peer connection.
    Uplink,
    /// A subscribed stream's peer connection.
    Downlink,
}

/// What the actor does after a failure.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkAction {
    /// Build a new peer connection and renegotiate after `delay`.
    Rebuild {
        /// 1 for the first rebuild after a good connection.
        attempt: u32,
        /// Wait this long first.
        delay: Duration,
    },
    /// Stop trying; report this error.
    GiveUp(RtcError),
}

/// The failure count of one link.
#[derive(Clone, Debug)]
pub struct LinkHealth {
    kind: LinkKind,
    failures: u32,
    max_rebuilds: u32,
    delay: Duration,
}

impl LinkHealth {
    /// A healthy link with the default limits.
    pub fn new(kind: LinkKind) -> Self {
        Self::with_limits(kind, DEFAULT_MAX_REBUILDS, DEFAULT_REBUILD_DELAY)
    }

    /// A healthy link that rebuilds at most `max_rebuilds` times in a row.
    pub fn with_limits(kind: LinkKind, max_rebuilds: u32, delay: Duration) -> Self {
        LinkHealth {
            kind,
            failures: 0,
            max_rebuilds,
            delay,
        }
    }

    /// The peer connection is up: forget earlier failures.
    pub fn connected(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The peer connection failed (or a rebuild did not connect).
    pub fn failed(&mut self) -> LinkAction {
        self.failures += 1;
        if self.failures > self.max_rebuilds {
            let (code, what) = match self.kind {
                LinkKind::Uplink => (ErrorCode::UplinkReconnectionFailed, "uplink"),
                LinkKind::Downlink => (ErrorCode::DownlinkReconnectionFailed, "downlink"),
            };
            return LinkAction::GiveUp(RtcError::new(
                code,
                format!(
                    "the {what} peer connection failed {} times in a row",
                    self.failures
                ),
            ));
        }
        LinkAction::Rebuild {
            attempt: self.failures,
            delay: self.delay * self.failures,
        }
    }
}

/// Pipeline restarts allowed within [`PIPELINE_RESTART_WINDOW`] (receive and send
/// pipelines alike); one more failure gives up.
pub const PIPELINE_RESTARTS: usize = 3;

/// The window [`PIPELINE_RESTARTS`] counts in: a pipeline that failed a minute ago and ran
/// since is not in a crash loop.
pub const PIPELINE_RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A supervisor's restart budget: at most `max` restarts within `window` (plain, takes
/// `now`).
#[derive(Clone, Debug)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    restarts: Vec<std::time::Instant>,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self::new(PIPELINE_RESTARTS, PIPELINE_RESTART_WINDOW)
    }
}

impl RestartBudget {
    /// At most `max` restarts within `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            restarts: Vec::new(),
        }
    }

    /// A failure at `now`: `true` (and counted) when a restart is within the budget, `false`
    /// when the supervisor must give up.
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        let window = self.window;
        self.restarts
            .retain(|at| now.saturating_duration_since(*at) < window);
        if self.restarts.len() >= self.max {
            return false;
        }
        self.restarts.push(now);
        true
    }

    /// Restarts counted in the window (as of the last [`allow`](Self::allow)).
    pub fn recent(&self) -> usize {
        self.restarts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(100);

    #[test]
    fn rebuilds_with_growing_delay_then_gives_up_with_the_uplink_code() {
        let mut h = LinkHealth::with_limits(LinkKind::Uplink, 3, D);
        assert_eq!(
            h.failed(),
            LinkAction::Rebuild {
                attempt: 1,
                delay: D
            }
        );
        assert_eq!(
            h.failed(),
            LinkAction::Rebuild {
                attempt: 2,
                delay: 2 * D
            }
        );
        assert_eq!(
            h.failed(),
            LinkAction::Rebuild {
                attempt: 3,
                delay: 3 * D
            }
        );
        match h.failed() {
            LinkAction::GiveUp(e) => {
                assert_eq!(e.code, ErrorCode::UplinkReconnectionFailed);
                assert_eq!(e.code.value(), 0x4007);
            }
            other => panic!("expected give-up, got {other:?}"),
        }
    }

    #[test]
    fn a_good_connection_resets_the_count() {
        let mut h = LinkHealth::with_limits(LinkKind::Downlink, 1, D);
        assert!(matches!(h.failed(), LinkAction::Rebuild { attempt: 1, .. }));
        h.connected();
        assert_eq!(h.failures(), 0);
        assert!(matches!(h.failed(), LinkAction::Rebuild { attempt: 1, .. }));
        match h.failed() {
            LinkAction::GiveUp(e) => {
                assert_eq!(e.code, ErrorCode::DownlinkReconnectionFailed);
                assert_eq!(e.code.value(), 0x4008);
            }
            other => panic!("expected give-up, got {other:?}"),
        }
    }

    #[test]
    fn zero_rebuilds_gives_up_at_once() {
        let mut h = LinkHealth::with_limits(LinkKind::Uplink, 0, D);
        assert!(matches!(h.failed(), LinkAction::GiveUp(_)));
    }

    #[test]
    fn a_restart_budget_allows_max_restarts_per_window() {
        let t0 = std::time::Instant::now();
        let mut b = RestartBudget::new(3, Duration::from_secs(60));
        assert!(b.allow(t0));
        assert!(b.allow(t0 + Duration::from_secs(1)));
        assert!(b.allow(t0 + Duration::from_secs(2)));
        assert!(!b.allow(t0 + Duration::from_secs(3)), "a crash loop");
        assert_eq!(b.recent(), 3);
        // The first restart leaves the window: one more is allowed.
        assert!(b.allow(t0 + Duration::from_secs(60)));
        assert!(!b.allow(t0 + Duration::from_millis(60_500)));
        // Spread out, failures never run out.
        let mut b = RestartBudget::default();
        for n in 0..10u64 {
            assert!(b.allow(t0 + PIPELINE_RESTART_WINDOW * n as u32), "{n}");
        }
    }
}
