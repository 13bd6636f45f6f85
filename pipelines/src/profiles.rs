//! TRTC video and audio profiles (Web SDK v4 `setVideoProfile` / `setAudioProfile` presets).

use std::str::FromStr;

use crate::error::PipelineError;

/// Video encoding parameters: size, frame rate and target bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoProfile {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

impl VideoProfile {
    /// TRTC `120p`: 160×120, 15 fps, 200 kbit/s.
    pub const P120: Self = Self::new(160, 120, 15, 200);
    /// TRTC `180p`: 320×180, 15 fps, 350 kbit/s.
    pub const P180: Self = Self::new(320, 180, 15, 350);
    /// TRTC `240p`: 320×240, 15 fps, 400 kbit/s.
    pub const P240: Self = Self::new(320, 240, 15, 400);
    /// TRTC `360p`: 640×360, 15 fps, 800 kbit/s.
    pub const P360: Self = Self::new(640, 360, 15, 800);
    /// TRTC `480p`: 640×480, 15 fps, 900 kbit/s (the Web SDK default).
    pub const P480: Self = Self::new(640, 480, 15, 900);
    /// TRTC `720p`: 1280×720, 15 fps, 1500 kbit/s.
    pub const P720: Self = Self::new(1280, 720, 15, 1500);
    /// TRTC `1080p`: 1920×1080, 15 fps, 2000 kbit/s.
    pub const P1080: Self = Self::new(1920, 1080, 15, 2000);
    /// TRTC `1440p`: 2560×1440, 30 fps, 4860 kbit/s.
    pub const P1440: Self = Self::new(2560, 1440, 30, 4860);
    /// TRTC `4K`: 3840×2160, 30 fps, 9000 kbit/s.
    pub const P4K: Self = Self::new(3840, 2160, 30, 9000);

    /// TRTC Web SDK v4's default small stream (`setSmallStreamProfile` defaults: 160×120,
    /// 15 fps, 100 kbit/s), the second encoding of a stream with `enableSmallStream`.
    pub const SMALL_STREAM: Self = Self::new(160, 120, 15, 100);

    /// The presets with their TRTC names.
    pub const PRESETS: [(&'static str, Self); 9] = [
        ("120p", Self::P120),
        ("180p", Self::P180),
        ("240p", Self::P240),
        ("360p", Self::P360),
        ("480p", Self::P480),
        ("720p", Self::P720),
        ("1080p", Self::P1080),
        ("1440p", Self::P1440),
        ("4K", Self::P4K),
    ];

    /// A custom profile. Zero values are rejected by [`VideoProfile::validate`].
    pub const fn new(width: u32, height: u32, fps: u32, bitrate_kbps: u32) -> Self {
        Self {
            width,
            height,
            fps,
            bitrate_kbps,
        }
    }

    /// Keyframe interval in frames: 2 seconds of video.
    pub fn keyframe_interval(&self) -> u32 {
        self.fps.saturating_mul(2).max(1)
    }

    /// Checks that the profile can be encoded (non-zero, even dimensions for 4:2:0).
    pub fn validate(&self) -> Result<(), PipelineError> {
        if self.width == 0 || self.height == 0 || self.fps == 0 || self.bitrate_kbps == 0 {
            return Err(PipelineError::Config(format!(
                "video profile has a zero field: {self:?}"
            )));
        }
        if !self.width.is_multiple_of(2)
            || !self.height.is_multiple_of(2)
            || self.width > 7680
            || self.height > 4320
        {
            return Err(PipelineError::Config(format!(
                "video size must be even and at most 7680x4320: {self:?}"
            )));
        }
        if self.fps > 120 || self.bitrate_kbps > 100_000 {
            return Err(PipelineError::Config(format!(
                "video profile out of range: {self:?}"
            )));
        }
        Ok(())
    }
}

impl Default for VideoProfile {
    /// `480p`, the TRTC Web SDK default.
    fn default() -> Self {
        Self::P480
    }
}

impl FromStr for VideoProfile {
    type Err = PipelineError;

    /// Parses a preset name (`"720p"`, case-insensitive) or `WxH@FPS:KBPS` (`"1280x720@30:2000"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((_, p)) = Self::PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
        {
            return Ok(*p);
        }
        let bad = || PipelineError::Config(format!("unknown video profile `{s}`"));
        let (size, rest) = s.split_once('@').ok_or_else(bad)?;
        let (w, h) = size.split_once('x').ok_or_else(bad)?;
        let (fps, kbps) = rest.split_once(':').ok_or_else(bad)?;
        let num = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        let p = Self::new(num(w)?, num(h)?, num(fps)?, num(kbps)?);
        p.validate()?;
        Ok(p)
    }
}

/// Audio encoding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioProfile {
    /// Sample rate in Hz (Opus encodes at 48 kHz).
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo).
    pub channels: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

impl AudioProfile {
    /// TRTC `standard`: 48 kHz mono, 40 kbit/s.
    pub const STANDARD: Self = Self::new(48_000, 1, 40);
    /// TRTC `high`: 48 kHz mono, 128 kbit/s.
    pub const HIGH: Self = Self::new(48_000, 1, 128);
    /// TRTC `standard-stereo`: 48 kHz stereo, 64 kbit/s.
    pub const STANDARD_STEREO: Self = Self::new(48_000, 2, 64);
    /// TRTC `high-stereo`: 48 kHz stereo, 192 kbit/s.
    pub const HIGH_STEREO: Self = Self::new(48_000, 2, 192);

    /// The presets with their TRTC names.
    pub const PRESETS: [(&'static str, Self); 4] = [
        ("standard", Self::STANDARD),
        ("high", Self::HIGH),
        ("standard-stereo", Self::STANDARD_STEREO),
        ("high-stereo", Self::HIGH_STEREO),
    ];

    /// A custom profile.
    pub const fn new(sample_rate: u32, channels: u32, bitrate_kbps: u32) -> Self {
        Self {
            sample_rate,
            channels,
            bitrate_kbps,
        }
    }

    /// Checks the values against what Opus accepts (6–510 kbit/s, 1–2 channels).
    pub fn validate(&self) -> Result<(), PipelineError> {
        let rates = [8_000, 12_000, 16_000, 24_000, 48_000];
        if !rates.contains(&self.sample_rate)
            || !(1..=2).contains(&self.channels)
            || !(6..=510).contains(&self.bitrate_kbps)
        {
            return Err(PipelineError::Config(format!(
                "audio profile out of range: {self:?}"
            )));
        }
        Ok(())
    }
}

impl Default for AudioProfile {
    /// `standard`, the TRTC default.
    fn default() -> Self {
        Self::STANDARD
    }
}

impl FromStr for AudioProfile {
    type Err = PipelineError;

    /// Parses a TRTC preset name (`"high-stereo"`, case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, p)| *p)
            .ok_or_else(|| PipelineError::Config(format!("unknown audio profile `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_presets_match_trtc_table() {
        let want = [
            ("120p", 160, 120, 15, 200),
            ("180p", 320, 180, 15, 350),
            ("240p", 320, 240, 15, 400),
            ("360p", 640, 360, 15, 800),
            ("480p", 640, 480, 15, 900),
            ("720p", 1280, 720, 15, 1500),
            ("1080p", 1920, 1080, 15, 2000),
            ("1440p", 2560, 1440, 30, 4860),
            ("4K", 3840, 2160, 30, 9000),
        ];
        for (name, w, h, fps, kbps) in want {
            let p: VideoProfile = name.parse().unwrap();
            assert_eq!(p, VideoProfile::new(w, h, fps, kbps), "{name}");
            p.validate().unwrap();
            assert_eq!(p.keyframe_interval(), fps * 2);
        }
        assert_eq!(VideoProfile::default(), VideoProfile::P480);
        VideoProfile::SMALL_STREAM.validate().unwrap();
        assert_eq!(
            VideoProfile::SMALL_STREAM,
            VideoProfile::new(160, 120, 15, 100)
        );
    }

    #[test]
    fn custom_video_profile_parses_and_validates() {
        let p: VideoProfile = "1280x720@30:1500".parse().unwrap();
        assert_eq!(p, VideoProfile::new(1280, 720, 30, 1500));
        for bad in [
            "",
            "720",
            "1280x720",
            "1280x720@30",
            "0x720@30:1",
            "1281x720@30:1500",
            "axb@c:d",
        ] {
            assert!(bad.parse::<VideoProfile>().is_err(), "{bad}");
        }
        assert!(VideoProfile::new(2, 2, 0, 1).validate().is_err());
    }

    #[test]
    fn audio_presets_match_trtc_table() {
        let want = [
            ("standard", 1, 40),
            ("high", 1, 128),
            ("standard-stereo", 2, 64),
            ("high-stereo", 2, 192),
        ];
        for (name, ch, kbps) in want {
            let p: AudioProfile = name.parse().unwrap();
            assert_eq!(p, AudioProfile::new(48_000, ch, kbps));
            p.validate().unwrap();
        }
        assert!("loud".parse::<AudioProfile>().is_err());
        assert!(AudioProfile::new(44_100, 2, 64).validate().is_err());
        assert!(AudioProfile::new(48_000, 3, 64).validate().is_err());
    }
}
