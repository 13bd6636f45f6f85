//! Audio volume metering (TRTC's `audio-volume`): the RMS of raw PCM buffers as it passes a
//! pad, 0–100 (100 × the RMS amplitude relative to full scale), the loudest since the last
//! reading.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use gst::prelude::*;

/// The loudest volume seen since the last [`AudioMeter::take`].
#[derive(Debug, Default)]
pub struct AudioMeter {
    peak: AtomicU32,
    /// A buffer was measured since the meter was made.
    seen: std::sync::atomic::AtomicBool,
}

impl AudioMeter {
    /// The loudest volume since the last call (0–100), or `None` before any audio passed.
    pub fn take(&self) -> Option<u8> {
        if !self.seen.load(Ordering::Relaxed) {
            return None;
        }
        // At most 100 by `observe`.
        Some(self.peak.swap(0, Ordering::Relaxed) as u8)
    }

    fn observe(&self, volume: u8) {
        self.seen.store(true, Ordering::Relaxed);
        self.peak.fetch_max(u32::from(volume), Ordering::Relaxed);
    }
}

/// Volume (0–100) of interleaved signed 16-bit little-endian samples.
pub fn volume_s16le(data: &[u8]) -> u8 {
    let samples = data
        .chunks_exact(2)
        .map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0);
    volume(samples)
}

/// Volume (0–100) of interleaved 32-bit float little-endian samples.
pub fn volume_f32le(data: &[u8]) -> u8 {
    let samples = data
        .chunks_exact(4)
        .map(|s| f64::from(f32::from_le_bytes([s[0], s[1], s[2], s[3]])));
    volume(samples)
}

fn volume(samples: impl Iterator<Item = f64>) -> u8 {
    let (mut sum, mut n) = (0.0f64, 0u64);
    for s in samples {
        if s.is_finite() {
            sum += s * s;
            n += 1;
        }
    }
    if n == 0 {
        return 0;
    }
    let rms = (sum / n as f64).sqrt();
    // Clamped to 0..=100 before the cast.
    (rms * 100.0).round().clamp(0.0, 100.0) as u8
}

/// Meter the raw audio leaving `pad` (S16LE or F32LE; other formats are not measured).
pub(crate) fn meter_pad(pad: &gst::Pad, meter: Arc<AudioMeter>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let format = pad
            .current_caps()
            .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("format").ok()));
        let measure: fn(&[u8]) -> u8 = match format.as_deref() {
            Some("S16LE") => volume_s16le,
            Some("F32LE") => volume_f32le,
            _ => return gst::PadProbeReturn::Ok,
        };
        if let Ok(map) = buffer.map_readable() {
            meter.observe(measure(map.as_slice()));
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn volume_is_the_rms_as_a_percentage_of_full_scale() {
        assert_eq!(volume_s16le(&s16(&[0; 480])), 0);
        assert_eq!(volume_s16le(&[]), 0);
        // A full-scale square wave has RMS 1.
        let square: Vec<i16> = (0..480)
            .map(|i| if i % 2 == 0 { 32767 } else { -32768 })
            .collect();
        assert_eq!(volume_s16le(&s16(&square)), 100);
        // A sine of amplitude 0.5 has RMS 0.5 / sqrt(2) = 0.354.
        let sine: Vec<i16> = (0..4800)
            .map(|i| (0.5 * 32767.0 * (i as f64 * 0.1).sin()) as i16)
            .collect();
        assert_eq!(volume_s16le(&s16(&sine)), 35);
        let f: Vec<u8> = [0.5f32, -0.5, 0.5, -0.5]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(volume_f32le(&f), 50);
        let nan: Vec<u8> = [f32::NAN, 1.0]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(volume_f32le(&nan), 100, "non-finite samples are skipped");
    }

    #[test]
    fn the_meter_reports_the_loudest_since_the_last_reading() {
        let m = AudioMeter::default();
        assert_eq!(m.take(), None, "no audio yet");
        m.observe(10);
        m.observe(40);
        m.observe(20);
        assert_eq!(m.take(), Some(40));
        assert_eq!(m.take(), Some(0), "silence since");
    }
}
