//! Delay and jitter for the bench's media: this kernel has no `sch_netem`, so a small
//! userspace UDP relay stands between the light clients and the server. The server announces
//! the relay's address in its ICE candidates (`media.public_ip`); the relay listens on that
//! address at each of the server's media ports, and forwards every client's datagrams from
//! a socket of its own per client (so the server's answers come back to it) after a delay of
//! `delay + uniform(0..jitter)` each way. Packets may overtake each other under jitter, as
//! on a real path.
//!
//! The schedule is a plain state machine ([`DelayLine`]) that takes `now`; the sockets only
//! feed it.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Delay each way: a fixed part and a uniformly random extra.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Delay {
    /// Fixed one-way delay.
    pub delay_ms: f64,
    /// Extra one-way delay, uniform in `0..jitter_ms`.
    pub jitter_ms: f64,
}

impl Delay {
    /// Whether it delays anything.
    pub fn is_some(&self) -> bool {
        self.delay_ms > 0.0 || self.jitter_ms > 0.0
    }

    /// Check the figures a user gave.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("--delay-ms", self.delay_ms),
            ("--jitter-ms", self.jitter_ms),
        ] {
            if !(v.is_finite() && (0.0..=2000.0).contains(&v)) {
                anyhow::bail!("{name} must be between 0 and 2000");
            }
        }
        Ok(())
    }
}

/// Datagrams waiting for their time: pushed with their arrival time, popped when due.
#[derive(Debug)]
pub struct DelayLine<T> {
    delay: Delay,
    rng: u64,
    order: u64,
    heap: BinaryHeap<Due<T>>,
}

#[derive(Debug)]
struct Due<T> {
    at: Instant,
    order: u64,
    item: T,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for Due<T> {}
impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Due<T> {
    // Earliest first out of the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl<T> DelayLine<T> {
    /// An empty line; `seed` makes the jitter reproducible.
    pub fn new(delay: Delay, seed: u64) -> Self {
        DelayLine {
            delay,
            rng: seed | 1,
            order: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// xorshift64*: uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `item` arrived at `now`.
    pub fn push(&mut self, item: T, now: Instant) {
        let extra = self.delay.jitter_ms * self.uniform();
        let at = now + Duration::from_secs_f64((self.delay.delay_ms + extra) / 1000.0);
        self.order += 1;
        self.heap.push(Due {
            at,
            order: self.order,
            item,
        });
    }

    /// The next item due at or before `now`.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek().is_some_and(|d| d.at <= now) {
            self.heap.pop().map(|d| d.item)
        } else {
            None
        }
    }

    /// When the next item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|d| d.at)
    }
}

/// One datagram on its way: which socket sends it, where.
type Out = (Arc<UdpSocket>, SocketAddr, Bytes);

/// The relays of one bench run: one listener per server media port, started on demand.
#[derive(Clone)]
pub struct Relays {
    /// The server ports that have their relay.
    ports: Arc<Mutex<HashSet<u16>>>,
    listen_ip: IpAddr,
    server_ip: IpAddr,
    delay: Delay,
    tx: mpsc::UnboundedSender<Out>,
}

impl Relays {
    /// Relays listening on `listen_ip` (the address the server announces) for a server
    /// bound on `server_ip`, delaying by `delay` each way. Call from a tokio runtime.
    pub fn new(listen_ip: IpAddr, server_ip: IpAddr, delay: Delay) -> Relays {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(schedule(rx, delay));
        Relays {
            ports: Arc::default(),
            listen_ip,
            server_ip,
            delay,
            tx,
        }
    }

    /// The delay they add.
    pub fn delay(&self) -> Delay {
        self.delay
    }

    /// Make sure every port of the candidates in `sdp` (the server's answer) has its relay.
    pub async fn cover(&self, sdp: &str) -> anyhow::Result<()> {
        for port in candidate_ports(sdp, self.listen_ip) {
            let new = {
                let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
                ports.insert(port)
            };
            if new {
                let socket = UdpSocket::bind((self.listen_ip, port)).await?;
                tokio::spawn(listen(
                    Arc::new(socket),
                    SocketAddr::new(self.server_ip, port),
                    self.tx.clone(),
                ));
            }
        }
        Ok(())
    }
}

/// Ports of the host candidates in `sdp` on `ip`.
pub fn candidate_ports(sdp: &str, ip: IpAddr) -> Vec<u16> {
    let ip = ip.to_string();
    let mut ports: Vec<u16> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            (f.len() >= 6 && f[4] == ip).then(|| f[5].parse().ok())?
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Sends each datagram when it is due.
async fn schedule(mut rx: mpsc::UnboundedReceiver<Out>, delay: Delay) {
    let mut line = DelayLine::new(delay, u64::from(std::process::id()));
    loop {
        let due = line.next_due();
        tokio::select! {
            got = rx.recv() => match got {
                Some(out) => line.push(out, Instant::now()),
                None => return,
            },
            _ = async {
                match due {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let now = Instant::now();
        while let Some((socket, to, data)) = line.pop(now) {
            // UDP: a datagram the kernel refuses is a lost datagram, as on a real path.
            let _ = socket.try_send_to(&data, to);
        }
    }
}

/// One listener: client datagrams go to the server from a socket per client; the server's
/// answers on that socket go back to the client from the listener.
async fn listen(socket: Arc<UdpSocket>, server: SocketAddr, tx: mpsc::UnboundedSender<Out>) {
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    while let Ok((n, client)) = socket.recv_from(&mut buf).await {
        let up = match upstream.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind(SocketAddr::new(socket_ip(&socket), 0)).await else {
                    continue;
                };
                let u = Arc::new(u);
                upstream.insert(client, u.clone());
                tokio::spawn(answers(u.clone(), socket.clone(), client, tx.clone()));
                u
            }
        };
        if tx
            .send((up, server, Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            return;
        }
    }
}

fn socket_ip(s: &UdpSocket) -> IpAddr {
    s.local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

async fn answers(
    up: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    tx: mpsc::UnboundedSender<Out>,
) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = up.recv_from(&mut buf).await {
        if tx
            .send((listener.clone(), client, Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_after_their_delay_and_jitter_reorders() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut line = DelayLine::new(
            Delay {
                delay_ms: 50.0,
                jitter_ms: 0.0,
            },
            7,
        );
        line.push(1, t0);
        line.push(2, ms(10));
        assert_eq!(line.pop(ms(49)), None);
        assert_eq!(line.pop(ms(50)), Some(1));
        assert_eq!(line.pop(ms(50)), None);
        assert_eq!(line.next_due(), Some(ms(60)));
        assert_eq!(line.pop(ms(100)), Some(2));

        let mut line = DelayLine::new(
            Delay {
                delay_ms: 20.0,
                jitter_ms: 30.0,
            },
            7,
        );
        for i in 0..1000u32 {
            line.push(i, ms(u64::from(i)));
        }
        let mut out = Vec::new();
        let mut now = t0;
        while out.len() < 1000 {
            now += Duration::from_millis(1);
            while let Some(i) = line.pop(now) {
                // Never before its delay, never after delay + jitter (plus the step).
                let sent = ms(u64::from(i));
                assert!(now >= sent + Duration::from_millis(20), "{i} early");
                assert!(now <= sent + Duration::from_millis(51), "{i} late");
                out.push(i);
            }
        }
        let overtaken = out.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(overtaken > 10, "jitter of 30 ms at 1 ms spacing reorders");
    }

    #[test]
    fn candidate_ports_are_the_announced_addresses_ports() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 10.64.1.5 40001 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 10.64.1.5 40002 typ host\r\n\
                   a=candidate:3 1 udp 2130706431 10.64.1.6 40003 typ host\r\n\
                   a=candidate:1 1 udp 2130706431 10.64.1.5 40001 typ host\r\n";
        assert_eq!(
            candidate_ports(sdp, "10.64.1.5".parse().unwrap()),
            vec![40001, 40002]
        );
    }
}
