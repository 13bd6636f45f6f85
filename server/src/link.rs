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
    /// Another cluster node (`cascade.rs`): on a live room's node, an edge node's link (a
    /// hidden audience member); on the edge, a mirrored anchor of that room. Alive as long
    /// as the node link; no webhooks, not listed by the admin API.
    Edge,
}

impl LinkKind {
    /// Whether the member proves it is alive by heartbeats (else by its media peer).
    pub fn heartbeats(self) -> bool {
        matches!(self, LinkKind::Signalling)
    }

    /// Whether the member leaves when its media peer closes (WHIP/WHEP).
    pub fn lives_by_peer(self) -> bool {
        matches!(self, LinkKind::Whip | LinkKind::Whep)
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

/// The queue between a room and a link's driver. Hand-rolled rather than a tokio channel: a
/// tokio channel allocates a block of 32 slots per channel up front, ~1.8 KB per member of a
/// 10,000-member room; this costs ~100 bytes until something is queued.
#[derive(Debug)]
struct Outbox {
    frames: std::sync::Mutex<std::collections::VecDeque<Outgoing>>,
    capacity: usize,
    waker: futures_util::task::AtomicWaker,
    /// The room let go of the link.
    tx_gone: std::sync::atomic::AtomicBool,
    /// The driver let go of the link.
    rx_gone: std::sync::atomic::AtomicBool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Outgoing>> {
        // Held for a push or a pop only; a poisoned queue still holds whole frames.
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The room's end of a link: a bounded outbox it never waits on.
#[derive(Debug)]
pub struct LinkTx {
    outbox: std::sync::Arc<Outbox>,
}

/// The driver's end of a link.
#[derive(Debug)]
pub struct LinkRx {
    outbox: std::sync::Arc<Outbox>,
}

/// A new link with an outbox of [`OUTBOX_FRAMES`].
pub fn link() -> (LinkTx, LinkRx) {
    link_with_capacity(OUTBOX_FRAMES)
}

/// A new link with an outbox of `frames` (at least 2: one for events, one for the close).
pub fn link_with_capacity(frames: usize) -> (LinkTx, LinkRx) {
    let outbox = std::sync::Arc::new(Outbox {
        frames: std::sync::Mutex::new(std::collections::VecDeque::new()),
        capacity: frames.max(2),
        waker: futures_util::task::AtomicWaker::new(),
        tx_gone: std::sync::atomic::AtomicBool::new(false),
        rx_gone: std::sync::atomic::AtomicBool::new(false),
    });
    (
        LinkTx {
            outbox: outbox.clone(),
        },
        LinkRx { outbox },
    )
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
    /// Offer events without waiting. One slot stays free for [`LinkTx::close`].
    pub fn offer(&self, events: Vec<ByteString>) -> Offered {
        if self.is_closed() {
            return Offered::Gone;
        }
        {
            let mut q = self.outbox.lock();
            if q.len() + 1 >= self.outbox.capacity {
                return Offered::Full(events);
            }
            q.push_back(Outgoing::Events(events));
        }
        self.outbox.waker.wake();
        Offered::Sent
    }

    /// Close the link after `last` events, in the slot kept free by [`LinkTx::offer`].
    pub fn close(self, last: Vec<ByteString>, code: u16, reason: &'static str) {
        self.outbox
            .lock()
            .push_back(Outgoing::Close { last, code, reason });
        // Dropping `self` next marks the end and wakes the driver.
    }

    /// Whether the link's driver is gone.
    pub fn is_closed(&self) -> bool {
        self.outbox
            .rx_gone
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for LinkTx {
    fn drop(&mut self) {
        self.outbox
            .tx_gone
            .store(true, std::sync::atomic::Ordering::Release);
        self.outbox.waker.wake();
    }
}

impl Drop for LinkRx {
    fn drop(&mut self) {
        self.outbox
            .rx_gone
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl LinkRx {
    fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Outgoing>> {
        use std::task::Poll;
        let take = |o: &Outbox| {
            if let Some(f) = o.lock().pop_front() {
                return Poll::Ready(Some(f));
            }
            if o.tx_gone.load(std::sync::atomic::Ordering::Acquire) {
                // Anything queued before the room let go was pushed before the flag.
                return Poll::Ready(o.lock().pop_front());
            }
            Poll::Pending
        };
        if let Poll::Ready(r) = take(&self.outbox) {
            return Poll::Ready(r);
        }
        self.outbox.waker.register(cx.waker());
        // Again, after registering: a push between the first look and the registration
        // would otherwise wait for the next one.
        take(&self.outbox)
    }

    /// The next frame; `None` once the room let go of the link and everything queued was read.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
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
