//! What the client actor shares with the user's handle: the event subscribers and a view of
//! the state that the handle reads without a round trip to the actor.

use std::sync::{Mutex, MutexGuard};

use rtcroom_protocol::UserId;
use tokio::sync::mpsc;

use crate::event::{ClientEvent, RemoteMutedState};
use crate::lifecycle::ConnectionState;

/// The state a handle can read at once.
#[derive(Clone, Debug)]
pub struct ClientView {
    /// TRTC's connection state.
    pub connection_state: ConnectionState,
    /// `getRemoteMutedState()`.
    pub muted: Vec<RemoteMutedState>,
    /// The visible remote members.
    pub remote_users: Vec<UserId>,
}

impl Default for ClientView {
    fn default() -> Self {
        ClientView {
            connection_state: ConnectionState::Disconnected,
            muted: Vec::new(),
            remote_users: Vec::new(),
        }
    }
}

/// Event fan-out and the shared view of one client.
#[derive(Debug, Default)]
pub struct ClientHub {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ClientEvent>>>,
    view: Mutex<ClientView>,
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

    /// A receiver for every event from now on. Unbounded: events are small and few (room
    /// membership changes), and a slow reader must not stall the client actor.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ClientEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    /// Send `event` to every live subscriber; dropped receivers are forgotten.
    pub fn emit(&self, event: ClientEvent) {
        lock(&self.subscribers).retain(|tx| tx.send(event.clone()).is_ok());
    }

    /// End every subscriber's stream.
    pub fn close(&self) {
        lock(&self.subscribers).clear();
    }

    /// The current view.
    pub fn view(&self) -> ClientView {
        lock(&self.view).clone()
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
        assert_eq!(lock(&hub.subscribers).len(), 1);
        hub.close();
        assert!(a.try_recv().is_err());
        hub.update(|v| v.connection_state = ConnectionState::Connected);
        assert_eq!(hub.view().connection_state, ConnectionState::Connected);
    }
}
