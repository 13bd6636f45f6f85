//! The join / connection state machine of one client, with no sockets and no clock.
//!
//! ```text
//! New --join--> Connecting --join ok--> Joined
//!                  |  join failed / timeout: back to New (the user may retry)
//! Joined --signalling lost--> Reconnecting{1} --attempt failed--> Reconnecting{n+1}
//! Reconnecting --rejoined--> Joined
//! Reconnecting --attempts spent--> Disconnected(ReconnectFailed)  + error 0x4006
//! Reconnecting --rejoin refused by the server--> Disconnected(RejoinRefused)
//! Joined | Reconnecting --banned--> Disconnected(Banned)
//! Connecting | Joined | Reconnecting --leave--> Disconnected(Left)
//! Disconnected(any) --join--> Connecting   (a new session on the same client)
//! ```
//!
//! `Disconnected` ends a session: every room call but `join` fails at once. A `join` starts a
//! new session on the same client, as TRTC v4 allows after `leave()` (or after being removed
//! or losing the room); the client actor tears the old session down synchronously in `leave`
//! (connection, media, room view), so the new one starts clean.
//!
//! Users see TRTC's four connection states ([`ConnectionState`]); every phase change that
//! changes that state yields a [`StateChange`] for the `connection-state-changed` event. Calls
//! made in the wrong phase fail at once with INVALID_OPERATION and the v5 extra code.

use std::fmt;
use std::time::Duration;

use rtcroom_protocol::error::extra;
use rtcroom_protocol::{ErrorCode, RtcError};

use crate::backoff::ReconnectPolicy;

/// TRTC's connection states, as `connection-state-changed` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Not connected: before join, after leave, after a failed join or a final failure.
    Disconnected,
    /// Joining.
    Connecting,
    /// Joined, the signalling connection was lost, and the client is getting back in.
    Reconnecting,
    /// In the room.
    Connected,
}

impl ConnectionState {
    /// TRTC's name (`DISCONNECTED`, `CONNECTING`, `RECONNECTING`, `CONNECTED`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Disconnected => "DISCONNECTED",
            ConnectionState::Connecting => "CONNECTING",
            ConnectionState::Reconnecting => "RECONNECTING",
            ConnectionState::Connected => "CONNECTED",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of [`ConnectionState`] (`connection-state-changed {prevState, state}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The state before.
    pub prev: ConnectionState,
    /// The state now.
    pub state: ConnectionState,
}

/// Why a client is finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The user called `leave()`.
    Left,
    /// The server removed the client (`client-banned`: kick, banned, room disband).
    Banned,
    /// Reconnection attempts ran out (SIGNAL_CHANNEL_RECONNECTION_FAILED).
    ReconnectFailed,
    /// The server refused the re-join after a reconnect (its error was reported).
    RejoinRefused,
}

/// Where the client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, not joined (also after a failed join).
    New,
    /// A join is in flight.
    Connecting,
    /// In the room.
    Joined,
    /// Reconnecting; `attempt` is the attempt now scheduled or running (1-based).
    Reconnecting {
        /// The current attempt.
        attempt: u32,
    },
    /// Finished for good.
    Disconnected(EndReason),
}

/// What to do after the signalling connection was lost or a reconnect attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing: the loss does not matter in this phase (e.g. after leave).
    Ignore,
    /// Wait `delay`, then run attempt `attempt` (connect and re-join).
    Retry {
        /// The attempt to run (1-based).
        attempt: u32,
        /// How long to wait before it.
        delay: Duration,
        /// The state change to report (only on the first loss: CONNECTED → RECONNECTING).
        change: Option<StateChange>,
    },
    /// Attempts are spent: report `error` (0x4006) and the change to DISCONNECTED.
    GiveUp {
        /// SIGNAL_CHANNEL_RECONNECTION_FAILED.
        error: RtcError,
        /// RECONNECTING → DISCONNECTED.
        change: StateChange,
    },
}

/// What `leave()` must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeavePlan {
    /// Send `leave` to the server first (only when joined).
    pub send_leave: bool,
    /// A join is in flight and must be answered with an error.
    pub cancel_join: bool,
    /// The change to DISCONNECTED.
    pub change: StateChange,
}

/// The join / connection state machine.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    phase: Phase,
    policy: ReconnectPolicy,
}

impl Lifecycle {
    /// A new client's machine.
    pub fn new(policy: ReconnectPolicy) -> Self {
        Lifecycle {
            phase: Phase::New,
            policy,
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The reconnect policy.
    pub fn policy(&self) -> ReconnectPolicy {
        self.policy
    }

    /// TRTC's connection state for the phase.
    pub fn state(&self) -> ConnectionState {
        match self.phase {
            Phase::New | Phase::Disconnected(_) => ConnectionState::Disconnected,
            Phase::Connecting => ConnectionState::Connecting,
            Phase::Joined => ConnectionState::Connected,
            Phase::Reconnecting { .. } => ConnectionState::Reconnecting,
        }
    }

    fn go(&mut self, phase: Phase) -> StateChange {
        let prev = self.state();
        self.phase = phase;
        StateChange {
            prev,
            state: self.state(),
        }
    }

    fn finished_error(reason: EndReason) -> RtcError {
        let why = match reason {
            EndReason::Left => "the client has left the room",
            EndReason::Banned => "the client was removed from the room",
            EndReason::ReconnectFailed => "the client lost the room (reconnection failed)",
            EndReason::RejoinRefused => "the client lost the room (re-join refused)",
        };
        RtcError::invalid_operation(
            Some(extra::NOT_ENTERED_ROOM),
            format!("{why}; join() to enter a room again"),
        )
    }

    /// `join()` was called.
    pub fn join(&mut self) -> Result<StateChange, RtcError> {
        match self.phase {
            Phase::New | Phase::Disconnected(_) => Ok(self.go(Phase::Connecting)),
            Phase::Connecting | Phase::Joined | Phase::Reconnecting { .. } => {
                Err(RtcError::invalid_operation(
                    Some(extra::REPEATED_CALL),
                    "join() called while already joining or joined; call leave() first",
                ))
            }
        }
    }

    /// The join succeeded. `None` when no join was in flight (a stale answer).
    pub fn join_succeeded(&mut self) -> Option<StateChange> {
        match self.phase {
            Phase::Connecting => Some(self.go(Phase::Joined)),
            _ => None,
        }
    }

    /// The join failed (refused, timed out, connection failed); the user may try again.
    pub fn join_failed(&mut self) -> Option<StateChange> {
        match self.phase {
            Phase::Connecting => Some(self.go(Phase::New)),
            _ => None,
        }
    }

    /// The signalling connection of a joined client was lost (closed, errored, silent, or
    /// the server timed the member out with `user_time_out`).
    pub fn signal_lost(&mut self) -> Recovery {
        match self.phase {
            Phase::Joined => match self.policy.delay(1) {
                Some(delay) => {
                    let change = self.go(Phase::Reconnecting { attempt: 1 });
                    Recovery::Retry {
                        attempt: 1,
                        delay,
                        change: Some(change),
                    }
                }
                None => {
                    // No attempts allowed at all: give up straight from CONNECTED.
                    let change = self.go(Phase::Disconnected(EndReason::ReconnectFailed));
                    Recovery::GiveUp {
                        error: reconnection_failed(0),
                        change,
                    }
                }
            },
            _ => Recovery::Ignore,
        }
    }

    /// The running reconnect attempt failed (could not connect, or the re-join timed out or
    /// the connection dropped before the answer).
    pub fn reconnect_failed(&mut self) -> Recovery {
        match self.phase {
            Phase::Reconnecting { attempt } => match self.policy.delay(attempt + 1) {
                Some(delay) => {
                    self.phase = Phase::Reconnecting {
                        attempt: attempt + 1,
                    };
                    Recovery::Retry {
                        attempt: attempt + 1,
                        delay,
                        change: None,
                    }
                }
                None => {
                    let change = self.go(Phase::Disconnected(EndReason::ReconnectFailed));
                    Recovery::GiveUp {
                        error: reconnection_failed(attempt),
                        change,
                    }
                }
            },
            _ => Recovery::Ignore,
        }
    }

    /// The re-join after a reconnect succeeded.
    pub fn rejoined(&mut self) -> Option<StateChange> {
        match self.phase {
            Phase::Reconnecting { .. } => Some(self.go(Phase::Joined)),
            _ => None,
        }
    }

    /// The server refused the re-join (e.g. the UserSig expired meanwhile): final.
    pub fn rejoin_refused(&mut self) -> Option<StateChange> {
        match self.phase {
            Phase::Reconnecting { .. } => {
                Some(self.go(Phase::Disconnected(EndReason::RejoinRefused)))
            }
            _ => None,
        }
    }

    /// The server removed the client (`kick`, `banned`, `room_disband`): final.
    pub fn banned(&mut self) -> Option<StateChange> {
        match self.phase {
            Phase::Joined | Phase::Reconnecting { .. } => {
                Some(self.go(Phase::Disconnected(EndReason::Banned)))
            }
            _ => None,
        }
    }

    /// `leave()` was called.
    pub fn leave(&mut self) -> Result<LeavePlan, RtcError> {
        let (send_leave, cancel_join) = match self.phase {
            Phase::New => {
                return Err(RtcError::invalid_operation(
                    Some(extra::NOT_ENTERED_ROOM),
                    "leave() called before join()",
                ));
            }
            Phase::Disconnected(reason) => return Err(Self::finished_error(reason)),
            Phase::Connecting => (false, true),
            Phase::Joined => (true, false),
            Phase::Reconnecting { .. } => (false, false),
        };
        let change = self.go(Phase::Disconnected(EndReason::Left));
        Ok(LeavePlan {
            send_leave,
            cancel_join,
            change,
        })
    }

    /// Check that a room operation (`op`, for the message) may run now: only when joined.
    pub fn require_joined(&self, op: &str) -> Result<(), RtcError> {
        match self.phase {
            Phase::Joined => Ok(()),
            Phase::New | Phase::Connecting => Err(RtcError::invalid_operation(
                Some(extra::NOT_ENTERED_ROOM),
                format!("{op}() needs a joined client: call join() and await it first"),
            )),
            Phase::Reconnecting { .. } => Err(RtcError::invalid_operation(
                Some(extra::NOT_ENTERED_ROOM),
                format!("{op}() is not possible while reconnecting; wait for CONNECTED"),
            )),
            Phase::Disconnected(reason) => Err(Self::finished_error(reason)),
        }
    }
}

/// SIGNAL_CHANNEL_RECONNECTION_FAILED after `attempts` failed attempts.
pub fn reconnection_failed(attempts: u32) -> RtcError {
    RtcError::new(
        ErrorCode::SignalChannelReconnectionFailed,
        format!("signalling channel reconnection failed after {attempts} attempts"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionState::*;

    fn policy(max: u32) -> ReconnectPolicy {
        ReconnectPolicy {
            max_attempts: max,
            unit: Duration::from_secs(1),
        }
    }

    fn change(prev: ConnectionState, state: ConnectionState) -> StateChange {
        StateChange { prev, state }
    }

    fn joined() -> Lifecycle {
        let mut l = Lifecycle::new(policy(3));
        l.join().unwrap();
        l.join_succeeded().unwrap();
        l
    }

    fn is_invalid_op(r: Result<impl fmt::Debug, RtcError>, extra_code: i32) {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOperation, "{e}");
        assert_eq!(e.extra_code, Some(extra_code), "{e}");
    }

    #[test]
    fn states_have_trtc_names() {
        assert_eq!(Disconnected.to_string(), "DISCONNECTED");
        assert_eq!(Connecting.as_str(), "CONNECTING");
        assert_eq!(Reconnecting.as_str(), "RECONNECTING");
        assert_eq!(Connected.as_str(), "CONNECTED");
    }

    #[test]
    fn join_then_leave() {
        let mut l = Lifecycle::new(policy(3));
        assert_eq!(l.phase(), Phase::New);
        assert_eq!(l.state(), Disconnected);
        assert_eq!(l.join().unwrap(), change(Disconnected, Connecting));
        assert_eq!(l.phase(), Phase::Connecting);
        assert_eq!(l.join_succeeded(), Some(change(Connecting, Connected)));
        assert_eq!(l.phase(), Phase::Joined);
        assert!(l.require_joined("switchRole").is_ok());
        let plan = l.leave().unwrap();
        assert_eq!(
            plan,
            LeavePlan {
                send_leave: true,
                cancel_join: false,
                change: change(Connected, Disconnected)
            }
        );
        assert_eq!(l.phase(), Phase::Disconnected(EndReason::Left));
    }

    #[test]
    fn failed_join_may_be_retried() {
        let mut l = Lifecycle::new(policy(3));
        l.join().unwrap();
        assert_eq!(l.join_failed(), Some(change(Connecting, Disconnected)));
        assert_eq!(l.phase(), Phase::New);
        assert_eq!(l.join().unwrap(), change(Disconnected, Connecting));
        assert!(l.join_succeeded().is_some());
    }

    #[test]
    fn join_twice_is_invalid_in_every_live_phase() {
        let mut l = Lifecycle::new(policy(3));
        l.join().unwrap();
        is_invalid_op(l.join(), extra::REPEATED_CALL);
        l.join_succeeded();
        is_invalid_op(l.join(), extra::REPEATED_CALL);
        l.signal_lost();
        is_invalid_op(l.join(), extra::REPEATED_CALL);
        // The failed calls changed nothing.
        assert_eq!(l.phase(), Phase::Reconnecting { attempt: 1 });
    }

    #[test]
    fn calls_before_join_are_invalid() {
        let mut l = Lifecycle::new(policy(3));
        is_invalid_op(l.leave(), extra::NOT_ENTERED_ROOM);
        is_invalid_op(l.require_joined("switchRole"), extra::NOT_ENTERED_ROOM);
        l.join().unwrap();
        is_invalid_op(l.require_joined("switchRole"), extra::NOT_ENTERED_ROOM);
        assert_eq!(l.phase(), Phase::Connecting);
    }

    #[test]
    fn every_call_after_an_end_but_join_is_invalid() {
        let ends: Vec<(Lifecycle, EndReason)> = {
            let mut left = joined();
            left.leave().unwrap();
            let mut banned = joined();
            banned.banned().unwrap();
            let mut failed = Lifecycle::new(policy(1));
            failed.join().unwrap();
            failed.join_succeeded();
            failed.signal_lost();
            failed.reconnect_failed();
            let mut refused = joined();
            refused.signal_lost();
            refused.rejoin_refused().unwrap();
            vec![
                (left, EndReason::Left),
                (banned, EndReason::Banned),
                (failed, EndReason::ReconnectFailed),
                (refused, EndReason::RejoinRefused),
            ]
        };
        for (mut l, reason) in ends {
            assert_eq!(l.phase(), Phase::Disconnected(reason));
            assert_eq!(l.state(), Disconnected);
            is_invalid_op(l.leave(), extra::NOT_ENTERED_ROOM);
            is_invalid_op(l.require_joined("switchRole"), extra::NOT_ENTERED_ROOM);
            // Late inputs change nothing.
            assert_eq!(l.join_succeeded(), None);
            assert_eq!(l.join_failed(), None);
            assert_eq!(l.signal_lost(), Recovery::Ignore);
            assert_eq!(l.reconnect_failed(), Recovery::Ignore);
            assert_eq!(l.rejoined(), None);
            assert_eq!(l.rejoin_refused(), None);
            assert_eq!(l.banned(), None);
            assert_eq!(l.phase(), Phase::Disconnected(reason));
            // A join starts a new session, which goes the whole way again.
            assert_eq!(l.join().unwrap(), change(Disconnected, Connecting));
            assert_eq!(l.join_succeeded(), Some(change(Connecting, Connected)));
            assert_eq!(l.phase(), Phase::Joined);
            assert!(l.leave().unwrap().send_leave);
        }
    }

    #[test]
    fn leave_while_connecting_cancels_the_join() {
        let mut l = Lifecycle::new(policy(3));
        l.join().unwrap();
        let plan = l.leave().unwrap();
        assert!(plan.cancel_join && !plan.send_leave);
        assert_eq!(plan.change, change(Connecting, Disconnected));
        // The join's late answer is ignored.
        assert_eq!(l.join_succeeded(), None);
        assert_eq!(l.phase(), Phase::Disconnected(EndReason::Left));
    }

    #[test]
    fn leave_while_reconnecting_sends_nothing() {
        let mut l = joined();
        l.signal_lost();
        let plan = l.leave().unwrap();
        assert!(!plan.cancel_join && !plan.send_leave);
        assert_eq!(plan.change, change(Reconnecting, Disconnected));
        assert_eq!(l.reconnect_failed(), Recovery::Ignore);
        assert_eq!(l.rejoined(), None);
    }

    #[test]
    fn loss_reconnects_with_the_backoff_then_gives_up() {
        let mut l = joined();
        assert_eq!(
            l.signal_lost(),
            Recovery::Retry {
                attempt: 1,
                delay: Duration::from_secs(1),
                change: Some(change(Connected, Reconnecting)),
            }
        );
        assert_eq!(l.state(), Reconnecting);
        // A second loss report for the same outage is ignored.
        assert_eq!(l.signal_lost(), Recovery::Ignore);
        assert_eq!(
            l.reconnect_failed(),
            Recovery::Retry {
                attempt: 2,
                delay: Duration::from_secs(2),
                change: None
            }
        );
        assert_eq!(
            l.reconnect_failed(),
            Recovery::Retry {
                attempt: 3,
                delay: Duration::from_secs(3),
                change: None
            }
        );
        let Recovery::GiveUp { error, change: c } = l.reconnect_failed() else {
            panic!("gives up after 3 attempts")
        };
        assert_eq!(error.code, ErrorCode::SignalChannelReconnectionFailed);
        assert_eq!(error.code.value(), 0x4006);
        assert_eq!(c, change(Reconnecting, Disconnected));
        assert_eq!(l.phase(), Phase::Disconnected(EndReason::ReconnectFailed));
    }

    #[test]
    fn default_policy_makes_30_attempts() {
        let mut l = Lifecycle::new(ReconnectPolicy::default());
        l.join().unwrap();
        l.join_succeeded();
        let mut delays = Vec::new();
        let mut recovery = l.signal_lost();
        loop {
            match recovery {
                Recovery::Retry { delay, .. } => delays.push(delay.as_secs()),
                Recovery::GiveUp { .. } => break,
                Recovery::Ignore => panic!("ignored while reconnecting"),
            }
            recovery = l.reconnect_failed();
        }
        assert_eq!(delays.len(), 30);
        assert_eq!(&delays[..7], &[1, 2, 3, 5, 8, 13, 13]);
    }

    #[test]
    fn zero_attempts_gives_up_at_once() {
        let mut l = Lifecycle::new(policy(0));
        l.join().unwrap();
        l.join_succeeded();
        let Recovery::GiveUp { change: c, .. } = l.signal_lost() else {
            panic!("no attempts allowed")
        };
        assert_eq!(c, change(Connected, Disconnected));
    }

    #[test]
    fn rejoin_restores_connected_and_resets_the_attempts() {
        let mut l = joined();
        l.signal_lost();
        l.reconnect_failed();
        assert_eq!(l.phase(), Phase::Reconnecting { attempt: 2 });
        is_invalid_op(l.require_joined("switchRole"), extra::NOT_ENTERED_ROOM);
        assert_eq!(l.rejoined(), Some(change(Reconnecting, Connected)));
        assert_eq!(l.phase(), Phase::Joined);
        // The next outage starts from attempt 1 again.
        let Recovery::Retry { attempt, .. } = l.signal_lost() else {
            panic!("retries")
        };
        assert_eq!(attempt, 1);
    }

    #[test]
    fn banned_is_final_from_joined_and_reconnecting() {
        let mut l = joined();
        assert_eq!(l.banned(), Some(change(Connected, Disconnected)));
        let mut l = joined();
        l.signal_lost();
        assert_eq!(l.banned(), Some(change(Reconnecting, Disconnected)));
        // Not before joining.
        let mut l = Lifecycle::new(policy(3));
        assert_eq!(l.banned(), None);
        l.join().unwrap();
        assert_eq!(l.banned(), None);
        assert_eq!(l.phase(), Phase::Connecting);
    }

    #[test]
    fn stray_inputs_in_new_and_joined_change_nothing() {
        let mut l = Lifecycle::new(policy(3));
        assert_eq!(l.join_succeeded(), None);
        assert_eq!(l.join_failed(), None);
        assert_eq!(l.signal_lost(), Recovery::Ignore);
        assert_eq!(l.reconnect_failed(), Recovery::Ignore);
        assert_eq!(l.rejoined(), None);
        assert_eq!(l.rejoin_refused(), None);
        assert_eq!(l.phase(), Phase::New);
        let mut l = joined();
        assert_eq!(l.join_succeeded(), None);
        assert_eq!(l.join_failed(), None);
        assert_eq!(l.reconnect_failed(), Recovery::Ignore);
        assert_eq!(l.rejoined(), None);
        assert_eq!(l.rejoin_refused(), None);
        assert_eq!(l.phase(), Phase::Joined);
        // A connecting client that loses its socket fails the join, not a reconnect.
        let mut l = Lifecycle::new(policy(3));
        l.join().unwrap();
        assert_eq!(l.signal_lost(), Recovery::Ignore);
        assert_eq!(l.reconnect_failed(), Recovery::Ignore);
        assert_eq!(l.phase(), Phase::Connecting);
    }
}
