//! What the client actor shares with the user's handle: the event subscribers and a view of
//! the state that the handle reads without a round trip to the actor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use rtcroom_protocol::UserId;
use tokio::sync::mpsc;

use crate::event::{ClientEvent, RemoteMutedState};
use crate::lifecycle::ConnectionState;

/// The state a handle can read at once. Updated one change at a time by the client actor
/// (see [`crate::core::Output::ViewMember`]); read it through the hub's accessors, which
/// copy only what is asked for.
#[derive(Clone, Debug)]
pub struct ClientView {
    /// TRTC's connection state.
    pub connection_state: ConnectionState,
    /// `getRemoteMutedState()`, by member.
    pub muted: BTreeMap<UserId, RemoteMutedState>,
    /// The visible remote members.
    pub remote_users: BTreeSet<UserId>,
}

impl Default for ClientView {
    fn default() -> Self {
        ClientView {
            connection_state: ConnectionState::Disconnected,
            muted: BTreeMap::new(),
            remote_users: BTreeSet::new(),
        }
    }
}

/// Most events kept for the first subscriber before it comes (oldest dropped beyond).
/// Generous: a join into a full room emits ~300 `peer-join` and as many `stream-added`.
pub const BACKLOG_LIMIT: usize = 4096;

/// Event fan-out and the shared view of one client.
#[derive(Debug, Default)]
pub struct ClientHub {
    subscribers: Mutex<Subscribers>,
    view: Mutex<ClientView>,
}

#[derive(Debug)]
struct Subscribers {
    txs: Vec<mpsc::UnboundedSender<ClientEvent>>,
    /// Every event since the client was created, until the first subscriber takes them
    /// (then `None`): events emitted before anyone called `events()`, such as the room's
    /// members announced while `join` resolves, are not lost.
    backlog: Option<std::collections::VecDeque<ClientEvent>>,
    /// Events the backlog dropped at its limit.
    backlog_dropped: u64,
    closed: bool,
}

impl Default for Subscribers {
    fn default() -> Self {
        Subscribers {
            txs: Vec::new(),
            backlog: Some(Default::default()),
            backlog_dropped: 0,
            closed: false,
        }
    }
}

/// Lock, recovering from poisoning: the guarded data is plain values that stay consistent
/// even if a holder panicked (each write replaces whole fields).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientHub {
    /// A new hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver of events: the first one gets every event since the hub was created (up
    /// to [`BACKLOG_LIMIT`]), later ones every event from now on. Unbounded: events are small
    /// and few (room membership changes), and a slow reader must not stall the client actor.
    /// After [`close`](Self::close) the stream ends once its backlog is read.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ClientEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = lock(&self.subscribers);
        if let Some(backlog) = subs.backlog.take() {
            if subs.backlog_dropped > 0 {
                tracing::warn!(
                    dropped = subs.backlog_dropped,
                    "the first event subscriber came late: the oldest events were dropped"
                );
            }
            for e in backlog {
                // The receiver is held here: the send cannot fail.
                let _ = tx.send(e);
            }
        }
        if !subs.closed {
            subs.txs.push(tx);
        }
        rx
    }

    /// Send `event` to every live subscriber (and to the backlog until the first comes);
    /// dropped receivers are forgotten.
    pub fn emit(&self, event: ClientEvent) {
        let mut subs = lock(&self.subscribers);
        subs.txs.retain(|tx| tx.send(event.clone()).is_ok());
        let mut dropped = 0;
        if let Some(backlog) = &mut subs.backlog {
            if backlog.len() >= BACKLOG_LIMIT {
                backlog.pop_front();
                dropped = 1;
            }
            backlog.push_back(event);
        }
        subs.backlog_dropped += dropped;
    }

    /// End every subscriber's stream (later subscribers get the backlog, then the end).
    pub fn close(&self) {
        let mut subs = lock(&self.subscribers);
        subs.txs.clear();
        subs.closed = true;
    }

    /// The current view (a full copy; the accessors below copy less).
    pub fn view(&self) -> ClientView {
        lock(&self.view).clone()
    }

    /// TRTC's connection state now.
    pub fn connection_state(&self) -> ConnectionState {
        lock(&self.view).connection_state
    }

    /// The visible remote members, in user id order.
    pub fn remote_users(&self) -> Vec<UserId> {
        lock(&self.view).remote_users.iter().cloned().collect()
    }

    /// `getRemoteMutedState()`, in user id order.
    pub fn muted(&self) -> Vec<RemoteMutedState> {
        lock(&self.view).muted.values().cloned().collect()
    }

    /// Change the view.
    pub fn update(&self, f: impl FnOnce(&mut ClientView)) {
        f(&mut lock(&self.view));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_reaches_live_subscribers_only() {
        let hub = ClientHub::new();
        let mut a = hub.subscribe();
        let b = hub.subscribe();
        drop(b);
        let ev = ClientEvent::ConnectionStateChanged {
            prev: ConnectionState::Disconnected,
            state: ConnectionState::Connecting,
        };
        hub.emit(ev.clone());
        assert_eq!(a.try_recv().unwrap(), ev);
        assert_eq!(lock(&hub.subscribers).txs.len(), 1);
        hub.close();
        assert!(a.try_recv().is_err());
        hub.update(|v| v.connection_state = ConnectionState::Connected);
        assert_eq!(hub.view().connection_state, ConnectionState::Connected);
    }

    fn joined(user: &str) -> ClientEvent {
        ClientEvent::PeerJoin {
            user_id: UserId::new(user).expect("valid user id"),
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<ClientEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let ClientEvent::PeerJoin { user_id } = e {
                out.push(user_id.to_string());
            }
        }
        out
    }

    #[test]
    fn the_first_subscriber_gets_every_event_since_creation_later_ones_from_then_on() {
        let hub = ClientHub::new();
        hub.emit(joined("a"));
        hub.emit(joined("b"));
        let mut first = hub.subscribe();
        hub.emit(joined("c"));
        let mut second = hub.subscribe();
        hub.emit(joined("d"));
        assert_eq!(drain(&mut first), ["a", "b", "c", "d"]);
        assert_eq!(drain(&mut second), ["d"]);
    }

    #[test]
    fn the_backlog_keeps_the_newest_events_up_to_its_limit() {
        let hub = ClientHub::new();
        for i in 0..BACKLOG_LIMIT + 5 {
            hub.emit(joined(&format!("u{i}")));
        }
        let got = drain(&mut hub.subscribe());
        assert_eq!(got.len(), BACKLOG_LIMIT);
        assert_eq!(got[0], "u5");
        assert_eq!(
            got.last().map(String::as_str),
            Some(&*format!("u{}", BACKLOG_LIMIT + 4))
        );
    }

    #[test]
    fn after_close_a_first_subscriber_reads_the_backlog_then_the_end() {
        let hub = ClientHub::new();
        hub.emit(joined("a"));
        hub.close();
        hub.emit(joined("late"));
        let mut rx = hub.subscribe();
        // The backlog took "late" too (the actor may emit while it stops); then the end.
        assert_eq!(drain(&mut rx), ["a", "late"]);
        assert_eq!(
            rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        );
    }
}
