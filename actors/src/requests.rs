//! Request/response correlation by request id, with a deadline per request.
//!
//! Each request sent on a signalling connection gets the next id (starting at 1; the server
//! uses id 0 for replies to frames it could not parse). The reply with that id resolves it;
//! a request still open at its deadline times out with the error TRTC gives for that kind:
//! a join with JOIN_ROOM_FAILED "join room timeout", anything else with API_CALL_TIMEOUT.
//! Generic over the waiter `W` (a oneshot sender in the actor) so it is tested without one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rtcroom_protocol::{ErrorCode, RtcError};

/// TRTC v4's join timeout: 5 s after the join command is sent (reference §2).
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout for other requests (leave, switch-role, heartbeat).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request is, for its timeout error and for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `join`.
    Join,
    /// `leave`.
    Leave,
    /// `heartbeat`.
    Heartbeat,
    /// `switch-role`.
    SwitchRole,
    /// Any other request (media requests will add their own kinds).
    Other,
}

impl RequestKind {
    /// The error a request of this kind ends with when it times out.
    pub fn timeout_error(self) -> RtcError {
        match self {
            RequestKind::Join => RtcError::new(ErrorCode::JoinRoomFailed, "join room timeout"),
            RequestKind::Leave => RtcError::new(ErrorCode::ApiCallTimeout, "leave timeout"),
            RequestKind::Heartbeat => RtcError::new(ErrorCode::ApiCallTimeout, "heartbeat timeout"),
            RequestKind::SwitchRole => {
                RtcError::new(ErrorCode::SwitchRoleFailed, "switch role timeout")
            }
            RequestKind::Other => RtcError::new(ErrorCode::ApiCallTimeout, "request timeout"),
        }
    }
}

#[derive(Debug)]
struct Pending<W> {
    kind: RequestKind,
    deadline: Instant,
    waiter: W,
}

/// Open requests of one connection.
#[derive(Debug)]
pub struct PendingRequests<W> {
    next_id: u64,
    open: BTreeMap<u64, Pending<W>>,
}

impl<W> Default for PendingRequests<W> {
    fn default() -> Self {
        PendingRequests {
            next_id: 1,
            open: BTreeMap::new(),
        }
    }
}

impl<W> PendingRequests<W> {
    /// No requests yet; the first id is 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a request sent at `now`; returns its id.
    pub fn insert(&mut self, kind: RequestKind, timeout: Duration, now: Instant, waiter: W) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            id,
            Pending {
                kind,
                deadline: now + timeout,
                waiter,
            },
        );
        id
    }

    /// The reply for `id` arrived: the request's kind and waiter, or `None` for an unknown id
    /// (a reply after its timeout, or a server bug; never a panic).
    pub fn resolve(&mut self, id: u64) -> Option<(RequestKind, W)> {
        self.open.remove(&id).map(|p| (p.kind, p.waiter))
    }

    /// Every request whose deadline is at or before `now`, removed, with its timeout error.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, RequestKind, W, RtcError)> {
        let due: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| {
                self.open
                    .remove(&id)
                    .map(|p| (id, p.kind, p.waiter, p.kind.timeout_error()))
            })
            .collect()
    }

    /// The earliest deadline of an open request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|p| p.deadline).min()
    }

    /// Remove every open request (the connection is gone).
    pub fn drain(&mut self) -> Vec<(u64, RequestKind, W)> {
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|(id, p)| (id, p.kind, p.waiter))
            .collect()
    }

    /// Requests still open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no request is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_replies_resolve() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new();
        let a = p.insert(RequestKind::Join, DEFAULT_JOIN_TIMEOUT, t0, "a");
        let b = p.insert(RequestKind::Heartbeat, Duration::from_secs(2), t0, "b");
        assert_eq!((a, b), (1, 2));
        assert_eq!(p.len(), 2);
        assert_eq!(p.resolve(b), Some((RequestKind::Heartbeat, "b")));
        assert_eq!(p.resolve(b), None, "a reply is consumed once");
        assert_eq!(p.resolve(0), None, "id 0 is never a request");
        assert_eq!(p.resolve(99), None);
        assert_eq!(p.resolve(a), Some((RequestKind::Join, "a")));
        assert!(p.is_empty());
    }

    #[test]
    fn join_times_out_after_5s_with_join_room_failed() {
        let t0 = Instant::now();
        let mut p = PendingRequests::new();
        let id = p.insert(RequestKind::Join, DEFAULT_JOIN_TIMEOUT, t0, ());
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(p.expire(t0 + Duration::from_millis(4999)).is_empty());
        let out = p.expire(t0 + Duration::from_secs(5));
        assert_eq!(out.len(), 1);
        let (eid, kind, (), err) = &out[0];
        assert_eq!((*eid, *kind), (id, RequestKind::Join));
        assert_eq!(err.code, ErrorCode::JoinRoomFailed);
        assert_eq!(err.code.value(), 0x4004);
        assert_eq!(err.message, "join room timeout");
        // A reply after the timeout is ignored.
        assert_eq!(p.resolve(id), None);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn each_request_has_its_own_deadline_and_error() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = PendingRequests::new();
        p.insert(RequestKind::Leave, 3 * s, t0, 1);
        p.insert(RequestKind::SwitchRole, s, t0 + s, 2);
        p.insert(RequestKind::Other, 10 * s, t0, 3);
        assert_eq!(p.next_deadline(), Some(t0 + 2 * s));
        let first = p.expire(t0 + 2 * s);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].2, 2);
        assert_eq!(first[0].3.code, ErrorCode::SwitchRoleFailed);
        let second = p.expire(t0 + 3 * s);
        assert_eq!(second[0].3.code, ErrorCode::ApiCallTimeout);
        assert_eq!(p.next_deadline(), Some(t0 + 10 * s));
        let rest = p.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].2, 3);
        assert!(p.is_empty());
        // Ids keep counting after a drain: a late reply never hits a new request.
        assert_eq!(p.insert(RequestKind::Other, s, t0, 4), 4);
    }

    #[test]
    fn every_kind_has_a_timeout_error() {
        for (kind, code) in [
            (RequestKind::Join, ErrorCode::JoinRoomFailed),
            (RequestKind::Leave, ErrorCode::ApiCallTimeout),
            (RequestKind::Heartbeat, ErrorCode::ApiCallTimeout),
            (RequestKind::SwitchRole, ErrorCode::SwitchRoleFailed),
            (RequestKind::Other, ErrorCode::ApiCallTimeout),
        ] {
            assert_eq!(kind.timeout_error().code, code);
        }
    }
}
