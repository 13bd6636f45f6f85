//! Simulcast (TRTC's big and small streams, issue #18), the decisions with no I/O: which
//! layer a subscriber receives, when it may switch, which layer its bandwidth allows, and
//! which layers anybody receives at all. Plain state machines that take `now`; the router
//! and the workers are to drive them (not wired yet: the protocol for layered publishing
//! comes first).
//!
//! - [`LayerSwitch`]: one subscriber's current and target layer. A switch happens only at a
//!   keyframe of the target layer (asked for when the target changes), so the decoder never
//!   gets a delta frame of a layer it has no reference for; until then the current layer
//!   keeps flowing. Sequence numbers and timestamps stay continuous across a switch because
//!   each layer is its own *source* for the subscriber's [`super::rewrite::SeqRewriter`].
//! - [`LayerPolicy`]: the layer a bandwidth estimate allows, down at once when the current
//!   layer no longer fits, up only after the next one has fitted with headroom for a while
//!   (hysteresis), audio's share kept aside so audio is never starved. An estimate that
//!   cannot grow on its own (a receiver that does not count the sender's padding probes in
//!   its feedback, as webrtc-rs does not) is helped by *trials*: while below the layer asked
//!   for, the next layer up is tried with the estimator restarted at what it needs
//!   ([`LayerPolicy::poll`]); if the estimate does not hold it for [`TRIAL_WINDOW`] (after a
//!   [`TRIAL_GRACE`] for reports from before the restart), back
//!   down, and the next trial waits twice as long (from [`TRIAL_BACKOFF`] to
//!   [`TRIAL_BACKOFF_MAX`]).
//! - [`wanted_layers`]: the union of what the subscribers of a stream receive or are
//!   switching to, so the publisher can pause the rest ("dynacast").

use std::time::{Duration, Instant};

/// A simulcast layer: 0 is the smallest (TRTC's small stream); higher is bigger.
pub type Layer = u8;

/// Bitrate kept aside for audio when choosing a video layer (Opus at its highest profile).
pub const AUDIO_RESERVE_BPS: u64 = 64_000;
/// How long the next layer up must fit before moving up.
pub const UP_HOLD: Duration = Duration::from_secs(3);
/// Headroom asked of the estimate before moving up (the estimate must exceed the layer's
/// bitrate by this factor), so a layer at the edge of the estimate is not flapped.
pub const UP_HEADROOM: f64 = 1.25;
/// How long a trial's layer must keep fitting the estimate to stay.
pub const TRIAL_WINDOW: Duration = Duration::from_secs(3);
/// Estimates in a trial's first moments are ignored: the restarted estimator's first
/// report can come after ones it computed before the restart.
pub const TRIAL_GRACE: Duration = Duration::from_secs(1);
/// The first wait before trying the next layer up (after moving down, or a good trial).
pub const TRIAL_BACKOFF: Duration = Duration::from_secs(4);
/// The longest wait between trials (doubling after each failed one).
pub const TRIAL_BACKOFF_MAX: Duration = Duration::from_secs(64);
/// A switch whose keyframe has not come this long after asking asks again.
pub const SWITCH_KEYFRAME_WAIT: Duration = Duration::from_millis(500);

/// What to do with a packet of some layer, for one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it (the subscriber's current layer, or the target's keyframe that switches).
    Forward,
    /// Not for this subscriber.
    Drop,
}

/// One subscriber's layer: what it receives now, and what it is switching to.
#[derive(Clone, Debug, Default)]
pub struct LayerSwitch {
    current: Option<Layer>,
    target: Option<Layer>,
    /// When the target's keyframe was last asked for (while switching).
    asked: Option<Instant>,
}

impl LayerSwitch {
    /// The layer being written, if any yet.
    pub fn current(&self) -> Option<Layer> {
        self.current
    }

    /// The layer wanted (the current one once a switch is done).
    pub fn target(&self) -> Option<Layer> {
        self.target
    }

    /// Want `layer` from now on. Returns the layer whose keyframe to ask for, when a switch
    /// starts (nothing when it is already the current or the pending target).
    pub fn set_target(&mut self, layer: Layer, now: Instant) -> Option<Layer> {
        if self.target == Some(layer) {
            return None;
        }
        self.target = Some(layer);
        if self.current == Some(layer) {
            self.asked = None;
            return None;
        }
        self.asked = Some(now);
        Some(layer)
    }

    /// A packet of `layer` (`keyframe`: it starts a keyframe) at `now`: whether to write it,
    /// and a layer whose keyframe to ask for again (a switch that waited
    /// [`SWITCH_KEYFRAME_WAIT`] in vain).
    pub fn on_packet(
        &mut self,
        layer: Layer,
        keyframe: bool,
        now: Instant,
    ) -> (Verdict, Option<Layer>) {
        let Some(target) = self.target else {
            return (Verdict::Drop, None);
        };
        if layer == target && self.current != Some(target) {
            if keyframe {
                // The switch: from this keyframe on, only the target layer.
                self.current = Some(target);
                self.asked = None;
                return (Verdict::Forward, None);
            }
            return (Verdict::Drop, self.ask_again(target, now));
        }
        if Some(layer) == self.current {
            let again = if self.current != self.target {
                self.ask_again(target, now)
            } else {
                None
            };
            return (Verdict::Forward, again);
        }
        (Verdict::Drop, None)
    }

    fn ask_again(&mut self, target: Layer, now: Instant) -> Option<Layer> {
        match self.asked {
            Some(t) if now.saturating_duration_since(t) < SWITCH_KEYFRAME_WAIT => None,
            _ => {
                self.asked = Some(now);
                Some(target)
            }
        }
    }
}

/// The layer a subscriber's bandwidth estimate allows, with hysteresis.
#[derive(Clone, Debug)]
pub struct LayerPolicy {
    /// Each layer's bitrate (bits/s), smallest layer first.
    bitrates: Vec<u64>,
    chosen: Layer,
    /// Since when the next layer up has fitted with headroom.
    up_since: Option<Instant>,
    /// The highest layer worth having (the one the subscriber asked for).
    ceiling: Layer,
    /// A trial of the chosen layer, started then.
    trial: Option<Instant>,
    /// When the next trial may start (while below the ceiling).
    next_trial: Option<Instant>,
    backoff: Duration,
}

/// Try a layer up: receive it, with the estimator restarted at `estimate_bps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trial {
    /// The layer to try.
    pub layer: Layer,
    /// What the estimator restarts at (the layer's bitrate with headroom, and audio's).
    pub estimate_bps: u64,
}

impl LayerPolicy {
    /// A policy over layers of these bitrates (smallest first), starting at `start`
    /// (clamped to the layers there are).
    pub fn new(bitrates: Vec<u64>, start: Layer) -> LayerPolicy {
        let top = Layer::try_from(bitrates.len().saturating_sub(1)).unwrap_or(Layer::MAX);
        LayerPolicy {
            bitrates,
            chosen: start.min(top),
            up_since: None,
            ceiling: top,
            trial: None,
            next_trial: None,
            backoff: TRIAL_BACKOFF,
        }
    }

    /// The highest layer worth having from `now` on (the one asked for): no trials above it.
    pub fn set_ceiling(&mut self, ceiling: Layer, now: Instant) {
        self.ceiling = ceiling;
        if self.chosen >= ceiling {
            self.next_trial = None;
        } else if self.next_trial.is_none() && self.trial.is_none() {
            self.next_trial = Some(now + self.backoff);
        }
    }

    /// Whether a trial is under way.
    pub fn in_trial(&self) -> bool {
        self.trial.is_some()
    }

    /// Time passes: a trial that lasted [`TRIAL_WINDOW`] succeeds; a due trial starts
    /// (returned: the caller switches to its layer and restarts its estimator).
    pub fn poll(&mut self, now: Instant) -> Option<Trial> {
        if let Some(since) = self.trial {
            if now.saturating_duration_since(since) >= TRIAL_WINDOW {
                self.trial = None;
                self.backoff = TRIAL_BACKOFF;
                self.schedule_trial(now);
            }
            return None;
        }
        let due = self.next_trial.is_some_and(|t| now >= t);
        if !due || self.chosen >= self.ceiling {
            return None;
        }
        let layer = self.chosen + 1;
        let bitrate = *self.bitrates.get(usize::from(layer))?;
        self.chosen = layer;
        self.trial = Some(now);
        self.next_trial = None;
        self.up_since = None;
        Some(Trial {
            layer,
            estimate_bps: (bitrate as f64 * UP_HEADROOM) as u64 + AUDIO_RESERVE_BPS,
        })
    }

    fn schedule_trial(&mut self, now: Instant) {
        self.next_trial = (self.chosen < self.ceiling).then(|| now + self.backoff);
    }

    /// The layer chosen now.
    pub fn chosen(&self) -> Layer {
        self.chosen
    }

    /// A new bandwidth estimate (bits/s) at `now`: the layer to receive, when it changes.
    /// Down at once to the biggest layer that fits beside audio (the smallest when none
    /// does); up one layer once the next has fitted with [`UP_HEADROOM`] for [`UP_HOLD`].
    pub fn on_estimate(&mut self, estimate_bps: u64, now: Instant) -> Option<Layer> {
        if self
            .trial
            .is_some_and(|t| now.saturating_duration_since(t) < TRIAL_GRACE)
        {
            return None;
        }
        let video = estimate_bps.saturating_sub(AUDIO_RESERVE_BPS);
        let fits =
            |layer: usize, bitrates: &[u64]| bitrates.get(layer).is_some_and(|b| *b <= video);
        let chosen = usize::from(self.chosen);
        if !fits(chosen, &self.bitrates) && chosen > 0 {
            let down = (0..chosen)
                .rev()
                .find(|l| fits(*l, &self.bitrates))
                .unwrap_or(0);
            self.up_since = None;
            // `down` < `chosen`, which is a Layer.
            self.chosen = Layer::try_from(down).unwrap_or(0);
            if self.trial.take().is_some() {
                self.backoff = (self.backoff * 2).min(TRIAL_BACKOFF_MAX);
            }
            self.schedule_trial(now);
            return Some(self.chosen);
        }
        if self.trial.is_some() {
            // A trial's fate is its own: no moving up on top of it.
            return None;
        }
        let next = chosen + 1;
        let roomy = self
            .bitrates
            .get(next)
            .is_some_and(|b| (*b as f64) * UP_HEADROOM <= video as f64);
        if !roomy {
            self.up_since = None;
            return None;
        }
        let since = *self.up_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= UP_HOLD {
            self.up_since = None;
            self.chosen = Layer::try_from(next).unwrap_or(self.chosen);
            self.schedule_trial(now);
            return Some(self.chosen);
        }
        None
    }
}

/// The layers some subscriber receives or is switching to, as a bit set (bit `l` for layer
/// `l`): the publisher may pause every other layer.
pub fn wanted_layers<'a>(switches: impl IntoIterator<Item = &'a LayerSwitch>) -> u32 {
    switches.into_iter().fold(0, |set, s| {
        [s.current, s.target]
            .into_iter()
            .flatten()
            .filter(|l| *l < 32)
            .fold(set, |set, l| set | (1 << l))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn a_switch_happens_at_the_target_layers_keyframe_only() {
        let mut s = LayerSwitch::default();
        // Nothing wanted: nothing written.
        assert_eq!(s.on_packet(1, true, at(0)), (Verdict::Drop, None));
        // The first target: its keyframe is asked for; its deltas are dropped until then.
        assert_eq!(s.set_target(1, at(0)), Some(1));
        assert_eq!(s.set_target(1, at(1)), None, "asked once");
        assert_eq!(s.on_packet(1, false, at(10)), (Verdict::Drop, None));
        assert_eq!(
            s.on_packet(0, true, at(11)),
            (Verdict::Drop, None),
            "not the target"
        );
        assert_eq!(s.on_packet(1, true, at(20)), (Verdict::Forward, None));
        assert_eq!(s.current(), Some(1));
        assert_eq!(s.on_packet(1, false, at(30)), (Verdict::Forward, None));
        // Down to 0: 1 keeps flowing until 0's keyframe, then only 0.
        assert_eq!(s.set_target(0, at(40)), Some(0));
        assert_eq!(s.on_packet(1, false, at(41)), (Verdict::Forward, None));
        assert_eq!(s.on_packet(0, false, at(42)), (Verdict::Drop, None));
        assert_eq!(s.on_packet(0, true, at(60)), (Verdict::Forward, None));
        assert_eq!(s.current(), Some(0));
        assert_eq!(
            s.on_packet(1, true, at(61)),
            (Verdict::Drop, None),
            "1 is over"
        );
        assert_eq!(s.on_packet(0, false, at(62)), (Verdict::Forward, None));
        // Changing its mind back to the current layer mid-switch: nothing to ask.
        assert_eq!(s.set_target(1, at(70)), Some(1));
        assert_eq!(s.set_target(0, at(71)), None);
        assert_eq!(s.on_packet(1, true, at(72)), (Verdict::Drop, None));
        assert_eq!(s.current(), Some(0));
    }

    #[test]
    fn a_switch_whose_keyframe_does_not_come_asks_again() {
        let mut s = LayerSwitch::default();
        s.set_target(0, at(0));
        s.on_packet(0, true, at(1));
        assert_eq!(s.set_target(2, at(100)), Some(2));
        // Layer 0 flows meanwhile; 2's deltas pass by.
        assert_eq!(s.on_packet(0, false, at(300)), (Verdict::Forward, None));
        assert_eq!(s.on_packet(2, false, at(599)), (Verdict::Drop, None));
        assert_eq!(
            s.on_packet(2, false, at(600)),
            (Verdict::Drop, Some(2)),
            "after the wait"
        );
        assert_eq!(
            s.on_packet(0, false, at(700)),
            (Verdict::Forward, None),
            "the wait restarts"
        );
        assert_eq!(s.on_packet(0, false, at(1100)), (Verdict::Forward, Some(2)));
        assert_eq!(s.on_packet(2, true, at(1150)), (Verdict::Forward, None));
        assert_eq!(
            s.on_packet(2, false, at(2000)),
            (Verdict::Forward, None),
            "switched"
        );
    }

    #[test]
    fn bandwidth_moves_down_at_once_and_up_after_holding_with_headroom() {
        // Small 150 kbit/s, big 1 Mbit/s.
        let mut p = LayerPolicy::new(vec![150_000, 1_000_000], 1);
        assert_eq!(p.chosen(), 1);
        assert_eq!(p.on_estimate(2_000_000, at(0)), None);
        // 400 kbit/s: the big layer no longer fits: down at once, audio kept aside.
        assert_eq!(p.on_estimate(400_000, at(100)), Some(0));
        // Barely enough for the big one (with audio): not enough headroom to go up.
        assert_eq!(p.on_estimate(1_100_000, at(200)), None);
        assert_eq!(p.on_estimate(1_100_000, at(5000)), None);
        // Enough with headroom, but not for long enough; a dip restarts the hold.
        assert_eq!(p.on_estimate(1_400_000, at(6000)), None);
        assert_eq!(p.on_estimate(1_400_000, at(8000)), None);
        assert_eq!(p.on_estimate(900_000, at(8500)), None);
        assert_eq!(p.on_estimate(1_400_000, at(9000)), None);
        assert_eq!(p.on_estimate(1_400_000, at(11_999)), None);
        assert_eq!(
            p.on_estimate(1_400_000, at(12_000)),
            Some(1),
            "held for 3 s"
        );
        assert_eq!(p.on_estimate(5_000_000, at(20_000)), None, "no layer above");
        // Nothing fits at all: the smallest layer, not nothing (audio still has its share).
        assert_eq!(p.on_estimate(10_000, at(21_000)), Some(0));
        assert_eq!(p.on_estimate(10_000, at(22_000)), None);
        // Three layers: from the top straight to the one that fits.
        let mut p = LayerPolicy::new(vec![100_000, 300_000, 1_200_000], 9);
        assert_eq!(p.chosen(), 2, "clamped to the layers there are");
        assert_eq!(p.on_estimate(400_000, at(0)), Some(1));
        assert_eq!(p.on_estimate(150_000, at(1)), Some(0));
    }

    #[test]
    fn below_the_layer_asked_for_the_next_one_is_tried_with_growing_waits() {
        let mut p = LayerPolicy::new(vec![100_000, 600_000], 1);
        assert_eq!(p.poll(at(0)), None, "at the ceiling: nothing to try");
        assert_eq!(p.on_estimate(300_000, at(0)), Some(0));
        // The estimate stays low (it cannot grow without probes): a trial after the wait.
        assert_eq!(p.poll(at(3999)), None);
        let trial = p.poll(at(4000)).expect("a trial");
        assert_eq!(trial.layer, 1);
        assert_eq!(trial.estimate_bps, 750_000 + AUDIO_RESERVE_BPS);
        assert_eq!(p.chosen(), 1);
        assert!(p.in_trial());
        // A stale estimate right after the restart is ignored; the restarted estimate falls
        // below the layer: back down; the next trial waits 8 s.
        assert_eq!(
            p.on_estimate(300_000, at(4010)),
            None,
            "from before the restart"
        );
        assert_eq!(p.on_estimate(700_000, at(5000)), None, "still fits");
        assert_eq!(p.on_estimate(400_000, at(5000)), Some(0));
        assert!(!p.in_trial());
        assert_eq!(p.poll(at(12_999)), None);
        assert_eq!(p.poll(at(13_000)).map(|t| t.layer), Some(1));
        // This one holds for the window: it stays, and the wait is back to 4 s.
        assert_eq!(p.on_estimate(900_000, at(14_000)), None);
        assert_eq!(p.poll(at(16_000)), None);
        assert!(!p.in_trial());
        assert_eq!(p.chosen(), 1);
        assert_eq!(p.on_estimate(300_000, at(20_000)), Some(0));
        assert_eq!(p.poll(at(23_999)), None);
        assert!(p.poll(at(24_000)).is_some());
        // Asking for the small layer: no trials above it.
        let mut q = LayerPolicy::new(vec![100_000, 600_000], 1);
        q.on_estimate(300_000, at(0));
        q.set_ceiling(0, at(0));
        assert_eq!(q.poll(at(100_000)), None);
        // Asking for big again: a trial after the wait.
        q.set_ceiling(1, at(100_000));
        assert!(q.poll(at(104_000)).is_some());
    }

    #[test]
    fn the_publisher_is_asked_for_the_layers_someone_receives_or_switches_to() {
        let mut a = LayerSwitch::default();
        let mut b = LayerSwitch::default();
        assert_eq!(wanted_layers([&a, &b]), 0);
        a.set_target(2, at(0));
        a.on_packet(2, true, at(1));
        b.set_target(0, at(0));
        b.on_packet(0, true, at(1));
        assert_eq!(wanted_layers([&a, &b]), 0b101);
        // b switching up: both its layers until the switch is done.
        b.set_target(1, at(10));
        assert_eq!(wanted_layers([&a, &b]), 0b111);
        b.on_packet(1, true, at(20));
        assert_eq!(wanted_layers([&a, &b]), 0b110);
    }
}
