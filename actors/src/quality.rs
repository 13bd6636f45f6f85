//! TRTC's `network-quality` (1 excellent … 6 disconnected) from loss and RTT: plain logic.

/// Network quality values (TRTC's `NetworkQuality`): 0 unknown, 1 excellent, 2 good,
/// 3 poor, 4 bad, 5 very bad, 6 disconnected.
pub type Quality = u8;

/// The quality for a loss fraction (0..1) and a round-trip time. With neither known the
/// quality is 0 (unknown); `connected == false` is 6.
pub fn network_quality(loss: Option<f64>, rtt_ms: Option<f64>, connected: bool) -> Quality {
    if !connected {
        return 6;
    }
    if loss.is_none() && rtt_ms.is_none() {
        return 0;
    }
    let loss = loss.unwrap_or(0.0).clamp(0.0, 1.0);
    let rtt = rtt_ms.unwrap_or(0.0).max(0.0);
    // The worse of the two decides.
    let by_loss = match loss {
        l if l < 0.01 => 1,
        l if l < 0.03 => 2,
        l if l < 0.08 => 3,
        l if l < 0.15 => 4,
        _ => 5,
    };
    let by_rtt = match rtt {
        r if r < 50.0 => 1,
        r if r < 100.0 => 2,
        r if r < 200.0 => 3,
        r if r < 400.0 => 4,
        _ => 5,
    };
    by_loss.max(by_rtt)
}

/// Loss over the last interval from cumulative (received, lost) packet counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct LossWindow {
    last: Option<(u64, u64)>,
}

impl LossWindow {
    /// Feed the current totals; returns the loss fraction since the last call (None at the
    /// first call or when nothing arrived).
    pub fn update(&mut self, received: u64, lost: u64) -> Option<f64> {
        let prev = self.last.replace((received, lost));
        let (r0, l0) = prev?;
        let dr = received.saturating_sub(r0);
        let dl = lost.saturating_sub(l0);
        (dr + dl > 0).then(|| dl as f64 / (dr + dl) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_levels() {
        assert_eq!(network_quality(None, None, true), 0);
        assert_eq!(network_quality(Some(0.0), Some(10.0), true), 1);
        assert_eq!(network_quality(Some(0.02), Some(10.0), true), 2);
        assert_eq!(network_quality(Some(0.0), Some(150.0), true), 3);
        assert_eq!(network_quality(Some(0.10), None, true), 4);
        assert_eq!(network_quality(Some(0.5), Some(10.0), true), 5);
        assert_eq!(network_quality(Some(0.0), Some(900.0), true), 5);
        assert_eq!(network_quality(Some(0.0), Some(10.0), false), 6);
    }

    #[test]
    fn loss_is_per_interval() {
        let mut w = LossWindow::default();
        assert_eq!(w.update(100, 0), None);
        assert_eq!(w.update(190, 10), Some(0.1));
        assert_eq!(w.update(190, 10), None, "nothing arrived");
        assert_eq!(w.update(290, 10), Some(0.0));
    }
}
