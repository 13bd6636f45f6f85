//! Members are links. A room does not know what carries a member's events: a signalling
//! WebSocket, a WHIP publisher, a WHEP viewer (tomorrow a remote node). It holds a [`LinkTx`]
//! (the sending half of a bounded outbox) and the link's driver reads the [`LinkRx`].
//!
//! ## Slow consumers
//! The outbox holds at most [`OUTBOX_FRAMES`] frames. A room never waits for a link: when the
//! outbox is full, the member's events stay in the room's pending list and are **coalesced**
//! into one frame when room frees up (events are already batched per window, so a slow
//! reader gets fewer, bigger frames). When more than [`LinkPolicy::max_pending_events`] are
//! waiting, the member is a **slow consumer**: its link is closed with WebSocket code 1008 and
//! reason `"slow consumer"`, and the room treats it as disconnected (it keeps its place until
//! its heartbeat timeout, as after any dropped connection; a client that resumes gets a fresh
//! member list). One slot of the outbox is kept for the close, so a close always gets through.

use bytestring::ByteString;
use tokio::sync::mpsc;

/// Frames an outbox holds (the last slot is kept for a close).
pub const OUTBOX_FRAMES: usize = 64;

/// WebSocket close code for a normal close (1000).
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code for a server going away (1001).
pub const CLOSE_AWAY: u16 = 1001;
/// WebSocket close code for a policy violation (1008): slow consumers, floods.
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for an internal error (1011): the room failed.
pub const CLOSE_INTERNAL: u16 = 1011;

/// What kind of transport a member uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinkKind {
    /// A signalling WebSocket (SDK clients): it heartbeats, and a silent one is evicted.
    #[default]
    Signalling,
    /// A WHIP publisher: no signalling, alive as long as its media peer.
    Whip,
    /// A WHEP viewer: no signalling, alive as long as its media peer.
    Whep,
}

impl LinkKind {
    /// Whether the member proves it is alive by heartbeats (else by its media peer).
    pub fn heartbeats(self) -> bool {
        matches!(self, LinkKind::Signalling)
    }
}

/// How a room treats a slow link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkPolicy {
    /// Events waiting for one member beyond which it is closed as a slow consumer.
    pub max_pending_events: usize,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            max_pending_events: 4096,
        }
    }
}

/// One frame for a link.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Events, encoded (`{"event":...}`), oldest first.
    Events(Vec<ByteString>),
    /// Send these last events, then close with this code and reason.
    Close {
        /// Last events (e.g. `client-banned`).
        last: Vec<ByteString>,
        /// WebSocket close code (1000, 1001, 1008, 1011).
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
}

/// The room's end of a link: a bounded outbox it never waits on.
#[derive(Debug)]
pub struct LinkTx {
    tx: mpsc::Sender<Outgoing>,
}

/// The driver's end of a link.
#[derive(Debug)]
pub struct LinkRx {
    rx: mpsc::Receiver<Outgoing>,
}

/// A new link with an outbox of [`OUTBOX_FRAMES`].
pub fn link() -> (LinkTx, LinkRx) {
    link_with_capacity(OUTBOX_FRAMES)
}

/// A new link with an outbox of `frames` (at least 2: one for events, one for the close).
pub fn link_with_capacity(frames: usize) -> (LinkTx, LinkRx) {
    let (tx, rx) = mpsc::channel(frames.max(2));
    (LinkTx { tx }, LinkRx { rx })
}

/// What became of events offered to a link.
#[derive(Debug, PartialEq)]
pub enum Offered {
    /// Handed over.
    Sent,
    /// The outbox is full: keep them and offer them again later (coalesced).
    Full(Vec<ByteString>),
    /// The link's driver is gone.
    Gone,
}

impl LinkTx {
    /// Offer events without waiting. One slot stays free for [`LinkTx::close`]. The room is
    /// the only sender, so the capacity it sees can only grow before its send.
    pub fn offer(&self, events: Vec<ByteString>) -> Offered {
        if self.tx.is_closed() {
            return Offered::Gone;
        }
        if self.tx.capacity() <= 1 {
            return Offered::Full(events);
        }
        match self.tx.try_send(Outgoing::Events(events)) {
            Ok(()) => Offered::Sent,
            Err(mpsc::error::TrySendError::Full(Outgoing::Events(e))) => Offered::Full(e),
            Err(_) => Offered::Gone,
        }
    }

    /// Close the link after `last` events. Uses the slot kept free by [`LinkTx::offer`]; if
    /// even that is taken (a second close), the link is closing anyway.
    pub fn close(self, last: Vec<ByteString>, code: u16, reason: &'static str) {
        let _ = self.tx.try_send(Outgoing::Close { last, code, reason });
    }

    /// Whether the link's driver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl LinkRx {
    /// The next frame; `None` once the room dropped its end (the member is gone).
    pub async fn recv(&mut self) -> Option<Outgoing> {
        self.rx.recv().await
    }

    /// The frames as a stream (for actors' `add_stream`).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Outgoing> + Unpin {
        LinkStream(self.rx)
    }
}

struct LinkStream(mpsc::Receiver<Outgoing>);

impl futures_util::Stream for LinkStream {
    type Item = Outgoing;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outgoing>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Vec<ByteString> {
        vec![ByteString::from(s.to_owned())]
    }

    #[tokio::test]
    async fn a_full_outbox_hands_events_back_and_still_takes_the_close() {
        let (tx, mut rx) = link_with_capacity(3);
        assert_eq!(tx.offer(ev("a")), Offered::Sent);
        assert_eq!(tx.offer(ev("b")), Offered::Sent);
        // The last slot is the close's.
        assert_eq!(tx.offer(ev("c")), Offered::Full(ev("c")));
        tx.close(ev("bye"), CLOSE_POLICY, "slow consumer");
        assert_eq!(rx.recv().await, Some(Outgoing::Events(ev("a"))));
        assert_eq!(rx.recv().await, Some(Outgoing::Events(ev("b"))));
        assert_eq!(
            rx.recv().await,
            Some(Outgoing::Close {
                last: ev("bye"),
                code: CLOSE_POLICY,
                reason: "slow consumer"
            })
        );
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_dropped_driver_reads_as_gone() {
        let (tx, rx) = link();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.offer(ev("a")), Offered::Gone);
    }
}
