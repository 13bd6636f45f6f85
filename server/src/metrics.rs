//! Prometheus metrics: plain atomic counters, rendered as the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Server-wide counters and gauges. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Rooms alive now.
    pub rooms: AtomicI64,
    /// Members in rooms now.
    pub members: AtomicI64,
    /// WebSocket connections open now.
    pub connections: AtomicI64,
    /// Successful joins.
    pub joins: AtomicU64,
    /// Signalling messages received.
    pub messages_in: AtomicU64,
    /// Signalling messages sent.
    pub messages_out: AtomicU64,
    /// Members removed by the server (duplicate kick, admin removal, dismissal, timeout).
    pub kicks: AtomicU64,
    /// Links closed because they did not read their events (slow consumers).
    pub slow_consumers: AtomicU64,
    /// Rooms dropped because their state machine panicked (their members were told 1011).
    pub room_faults: AtomicU64,
    /// Webhooks delivered.
    pub webhooks_delivered: AtomicU64,
    /// Webhooks given up on after all retries.
    pub webhooks_failed: AtomicU64,
    /// Webhooks dropped because the delivery queue was full.
    pub webhooks_dropped: AtomicU64,
    /// Webhook deliveries in flight now (being sent or waiting for a retry).
    pub webhooks_in_flight: AtomicI64,
    /// Signalling connections this node proxies to the node owning their room (cluster).
    pub proxied_links: AtomicI64,
    /// Edge nodes receiving this node's live rooms (one per room and edge; cascade).
    pub cascade_edges: AtomicI64,
    /// Live rooms of other nodes this node serves as an edge (cascade).
    pub cascade_links: AtomicI64,
    /// Frames from another node's cascade link that could not be read.
    pub cascade_bad_frames: AtomicU64,
    /// Rooms this node placed in the cluster directory.
    pub cluster_placements: AtomicU64,
    /// Redis calls of the cluster directory that failed or timed out.
    pub cluster_redis_errors: AtomicU64,
    /// Live nodes in the cluster (as of this node's last heartbeat; 0 without a cluster).
    pub cluster_nodes: AtomicI64,
    /// Rooms on all live nodes (as of this node's last heartbeat).
    pub cluster_rooms: AtomicI64,
    /// Members on all live nodes (as of this node's last heartbeat).
    pub cluster_members: AtomicI64,
    /// Failed joins by TRTC extra code (or main code when there is none).
    join_failures: Mutex<BTreeMap<i64, u64>>,
    /// The media plane's counters, once it runs.
    media: std::sync::OnceLock<std::sync::Arc<crate::media::MediaStats>>,
}

impl Metrics {
    /// Count a failed join.
    pub fn join_failed(&self, code: i64) {
        // A poisoned lock only means another thread panicked mid-increment; the map is still
        // a valid map, so keep counting.
        let mut m = self.join_failures.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(code).or_default() += 1;
    }

    /// Failed joins by code.
    pub fn join_failures(&self) -> BTreeMap<i64, u64> {
        self.join_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Show the media plane's counters too.
    pub fn attach_media(&self, stats: std::sync::Arc<crate::media::MediaStats>) {
        let _ = self.media.set(stats);
    }

    /// The media plane's counters, if it runs.
    pub fn media(&self) -> Option<&std::sync::Arc<crate::media::MediaStats>> {
        self.media.get()
    }

    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Render the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "rtcroom_rooms",
            "Rooms alive.",
            self.rooms.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_members",
            "Members in rooms.",
            self.members.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_connections",
            "Open signalling connections.",
            self.connections.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_joins_total",
            "Successful joins.",
            self.joins.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP rtcroom_join_failures_total Failed joins by TRTC code.\n# TYPE rtcroom_join_failures_total counter"
        );
        for (code, n) in self.join_failures() {
            let _ = writeln!(out, "rtcroom_join_failures_total{{code=\"{code}\"}} {n}");
        }
        gauge(
            &mut out,
            "rtcroom_proxied_links",
            "Signalling connections proxied to the node owning their room.",
            self.proxied_links.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_cascade_edges",
            "Node links feeding this node's live rooms to edge nodes (one per room and edge).",
            self.cascade_edges.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_cascade_links",
            "Live rooms of other nodes this node serves to its own audience as an edge.",
            self.cascade_links.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_cascade_bad_frames_total",
            "Frames from another node's cascade link that could not be read.",
            self.cascade_bad_frames.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_cluster_placements_total",
            "Rooms this node placed in the cluster.",
            self.cluster_placements.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_cluster_redis_errors_total",
            "Failed or timed-out Redis calls of the cluster directory.",
            self.cluster_redis_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_cluster_nodes",
            "Live nodes in the cluster (0 for a single node).",
            self.cluster_nodes.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_cluster_rooms",
            "Rooms on all live nodes of the cluster.",
            self.cluster_rooms.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_cluster_members",
            "Members on all live nodes of the cluster.",
            self.cluster_members.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_messages_in_total",
            "Signalling messages received.",
            self.messages_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_messages_out_total",
            "Signalling messages sent.",
            self.messages_out.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_kicks_total",
            "Members removed by the server.",
            self.kicks.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_slow_consumers_total",
            "Links closed because they did not read their events.",
            self.slow_consumers.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_room_faults_total",
            "Rooms dropped because their state machine failed.",
            self.room_faults.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_webhooks_delivered_total",
            "Webhooks delivered.",
            self.webhooks_delivered.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_webhooks_failed_total",
            "Webhooks given up after retries.",
            self.webhooks_failed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rtcroom_webhooks_dropped_total",
            "Webhooks dropped, queue full.",
            self.webhooks_dropped.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "rtcroom_webhooks_in_flight",
            "Webhook deliveries in flight (sending or waiting to retry).",
            self.webhooks_in_flight.load(Ordering::Relaxed),
        );
        if let Some(m) = self.media.get() {
            let c = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
                counter(out, name, help, v.load(Ordering::Relaxed))
            };
            c(
                &mut out,
                "rtcroom_media_packets_in_total",
                "RTP packets received from publishers.",
                &m.packets_in,
            );
            c(
                &mut out,
                "rtcroom_media_packets_out_total",
                "RTP packets forwarded to subscribers.",
                &m.packets_out,
            );
            c(
                &mut out,
                "rtcroom_media_bytes_in_total",
                "RTP payload bytes received.",
                &m.bytes_in,
            );
            c(
                &mut out,
                "rtcroom_media_bytes_out_total",
                "RTP payload bytes forwarded.",
                &m.bytes_out,
            );
            c(
                &mut out,
                "rtcroom_media_keyframe_requests_total",
                "Keyframe requests sent to publishers.",
                &m.keyframe_requests,
            );
            c(
                &mut out,
                "rtcroom_media_dropped_datagrams_total",
                "UDP datagrams matching no peer.",
                &m.dropped_datagrams,
            );
            c(
                &mut out,
                "rtcroom_media_connect_timeouts_total",
                "Peers dropped for not connecting.",
                &m.connect_timeouts,
            );
            c(
                &mut out,
                "rtcroom_media_send_drops_total",
                "Datagrams dropped by a full socket buffer.",
                &m.send_drops,
            );
            c(
                &mut out,
                "rtcroom_media_worker_queue_drops_total",
                "Messages dropped by a full media worker queue.",
                &m.worker_queue_drops,
            );
            c(
                &mut out,
                "rtcroom_media_worker_restarts_total",
                "Media workers restarted after a fault.",
                &m.worker_restarts,
            );
            c(
                &mut out,
                "rtcroom_media_event_drops_total",
                "Media peer events dropped (queue full or not taken).",
                &m.event_drops,
            );
            c(
                &mut out,
                "rtcroom_media_pipe_drops_total",
                "Packets or keyframe requests dropped by a full node-link pipe (a slow edge or origin).",
                &m.pipe_drops,
            );
            c(
                &mut out,
                "rtcroom_media_ice_restarts_total",
                "ICE restarts answered (a client's link recovered on its peer).",
                &m.ice_restarts,
            );
            gauge(
                &mut out,
                "rtcroom_media_peers",
                "Media peers alive.",
                m.peers.load(Ordering::Relaxed) as i64,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.rooms.store(2, Ordering::Relaxed);
        Metrics::inc(&m.joins);
        m.join_failed(70001);
        m.join_failed(70001);
        m.join_failed(-102052);
        let text = m.render();
        assert!(text.contains("\nrtcroom_rooms 2\n"), "{text}");
        assert!(text.contains("\nrtcroom_joins_total 1\n"), "{text}");
        assert!(
            text.contains("rtcroom_join_failures_total{code=\"70001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("rtcroom_join_failures_total{code=\"-102052\"} 1\n"),
            "{text}"
        );
        let media = std::sync::Arc::new(crate::media::MediaStats::default());
        media.worker_queue_drops.store(3, Ordering::Relaxed);
        media.worker_restarts.store(1, Ordering::Relaxed);
        m.attach_media(media);
        let text = m.render();
        assert!(
            text.contains("\nrtcroom_media_worker_queue_drops_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\nrtcroom_media_worker_restarts_total 1\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
