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
}
