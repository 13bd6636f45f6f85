//! Encoder selection: hardware first (each probed by really starting it), then software.
//!
//! [`choose_encoder`] is a plain function over "what is installed" and "what failed when
//! probed", so every branch is unit-tested without the hardware. [`select_encoder`] feeds it
//! the real registry and real probes (cached per process) and logs the choice.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use gst::prelude::*;

use crate::codec::VideoCodec;
use crate::error::{PipelineError, Result};
use crate::profiles::VideoProfile;
use crate::util;

/// A video encoder element rtcroom knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncoderKind {
    /// NVIDIA NVENC (legacy `nvh264enc`).
    NvH264,
    /// NVIDIA NVENC through CUDA memory (`nvcudah264enc`).
    NvCudaH264,
    /// VA-API, new plugin (`vah264enc`).
    VaH264,
    /// VA-API, legacy gstreamer-vaapi (`vaapih264enc`).
    VaapiH264,
    /// Intel Quick Sync (`qsvh264enc`).
    QsvH264,
    /// V4L2 memory-to-memory encoder, e.g. Raspberry Pi (`v4l2h264enc`).
    V4l2H264,
    /// x264 in software, tuned for zero latency (`x264enc`).
    X264,
    /// Cisco OpenH264 in software (`openh264enc`).
    OpenH264,
    /// libvpx VP8 in software (`vp8enc`).
    Vp8,
}

/// H.264 encoders in order of preference: hardware, then software.
pub const H264_PREFERENCE: [EncoderKind; 8] = [
    EncoderKind::NvH264,
    EncoderKind::NvCudaH264,
    EncoderKind::VaH264,
    EncoderKind::VaapiH264,
    EncoderKind::QsvH264,
    EncoderKind::V4l2H264,
    EncoderKind::X264,
    EncoderKind::OpenH264,
];

/// VP8 encoders in order of preference.
pub const VP8_PREFERENCE: [EncoderKind; 1] = [EncoderKind::Vp8];

impl EncoderKind {
    /// The GStreamer element factory name.
    pub fn factory_name(self) -> &'static str {
        match self {
            EncoderKind::NvH264 => "nvh264enc",
            EncoderKind::NvCudaH264 => "nvcudah264enc",
            EncoderKind::VaH264 => "vah264enc",
            EncoderKind::VaapiH264 => "vaapih264enc",
            EncoderKind::QsvH264 => "qsvh264enc",
            EncoderKind::V4l2H264 => "v4l2h264enc",
            EncoderKind::X264 => "x264enc",
            EncoderKind::OpenH264 => "openh264enc",
            EncoderKind::Vp8 => "vp8enc",
        }
    }

    /// The codec it produces.
    pub fn codec(self) -> VideoCodec {
        match self {
            EncoderKind::Vp8 => VideoCodec::Vp8,
            _ => VideoCodec::H264,
        }
    }

    /// Whether it needs hardware (and so must be probed before use).
    pub fn is_hardware(self) -> bool {
        !matches!(
            self,
            EncoderKind::X264 | EncoderKind::OpenH264 | EncoderKind::Vp8
        )
    }

    /// Encoders for a codec, in order of preference.
    pub fn preference(codec: VideoCodec) -> &'static [EncoderKind] {
        match codec {
            VideoCodec::H264 => &H264_PREFERENCE,
            VideoCodec::Vp8 => &VP8_PREFERENCE,
        }
    }

    /// Element properties (string form) implementing a profile with low latency.
    pub fn settings(self, profile: &VideoProfile) -> Vec<(&'static str, String)> {
        let kbps = profile.bitrate_kbps.to_string();
        let bps = (u64::from(profile.bitrate_kbps) * 1000).to_string();
        let gop = profile.keyframe_interval().to_string();
        let s = |v: &str| v.to_owned();
        match self {
            EncoderKind::X264 => vec![
                ("tune", s("zerolatency")),
                ("speed-preset", s(x264_speed_preset(profile))),
                ("bitrate", kbps),
                ("key-int-max", gop),
                ("bframes", s("0")),
            ],
            EncoderKind::OpenH264 => vec![
                ("bitrate", bps),
                ("gop-size", gop),
                ("rate-control", s("bitrate")),
                ("complexity", s("low")),
                ("usage-type", s("camera")),
            ],
            EncoderKind::Vp8 => vec![
                ("target-bitrate", bps),
                ("deadline", s("1")),
                ("cpu-used", s("8")),
                ("end-usage", s("cbr")),
                ("keyframe-max-dist", gop),
                ("lag-in-frames", s("0")),
                ("error-resilient", s("default")),
                ("threads", s("2")),
            ],
            EncoderKind::NvH264 => vec![
                ("bitrate", kbps),
                ("gop-size", gop),
                ("rc-mode", s("cbr")),
                ("zerolatency", s("true")),
                ("bframes", s("0")),
            ],
            EncoderKind::NvCudaH264 => vec![
                ("bitrate", kbps),
                ("gop-size", gop),
                ("rc-mode", s("cbr")),
                ("zerolatency", s("true")),
                ("b-frames", s("0")),
            ],
            EncoderKind::VaH264 => vec![
                ("bitrate", kbps),
                ("key-int-max", gop),
                ("rate-control", s("cbr")),
                ("b-frames", s("0")),
            ],
            EncoderKind::VaapiH264 => vec![
                ("bitrate", kbps),
                ("keyframe-period", gop),
                ("rate-control", s("cbr")),
                ("max-bframes", s("0")),
            ],
            EncoderKind::QsvH264 => vec![
                ("bitrate", kbps),
                ("gop-size", gop),
                ("rate-control", s("cbr")),
                ("b-frames", s("0")),
            ],
            EncoderKind::V4l2H264 => vec![(
                "extra-controls",
                format!(
                    "controls,video_bitrate={},h264_i_frame_period={gop},repeat_sequence_header=1",
                    u64::from(profile.bitrate_kbps) * 1000
                ),
            )],
        }
    }
}

/// x264 preset: `veryfast` is affordable up to 480p, `ultrafast` above.
fn x264_speed_preset(profile: &VideoProfile) -> &'static str {
    if u64::from(profile.width) * u64::from(profile.height) <= 640 * 480 {
        "veryfast"
    } else {
        "ultrafast"
    }
}

/// Picks the encoder for `codec`.
///
/// * `installed(name)`: whether the registry has the factory.
/// * `probe_failed(name)`: whether really starting it failed (only asked for installed ones,
///   in preference order, so a caller may probe lazily).
/// * `forced`: a factory name from configuration; it is used if installed and working, and
///   never silently replaced by another encoder.
pub fn choose_encoder(
    codec: VideoCodec,
    installed: &dyn Fn(&str) -> bool,
    probe_failed: &mut dyn FnMut(&str) -> bool,
    forced: Option<&str>,
) -> Result<EncoderKind> {
    let candidates = EncoderKind::preference(codec);
    if let Some(name) = forced {
        let kind = candidates
            .iter()
            .copied()
            .find(|k| k.factory_name() == name)
            .ok_or_else(|| PipelineError::UnknownEncoder {
                name: name.to_owned(),
                codec: format!("{codec:?}"),
            })?;
        if !installed(name) {
            return Err(PipelineError::EncoderNotInstalled(name.to_owned()));
        }
        if probe_failed(name) {
            return Err(PipelineError::EncoderProbeFailed(name.to_owned()));
        }
        return Ok(kind);
    }
    let mut tried = Vec::new();
    for &kind in candidates {
        let name = kind.factory_name();
        if !installed(name) {
            tried.push(format!("{name}: not installed"));
        } else if probe_failed(name) {
            tried.push(format!("{name}: probe failed"));
        } else {
            return Ok(kind);
        }
    }
    Err(PipelineError::NoEncoder {
        codec: format!("{codec:?}"),
        tried,
    })
}

/// Probe results of this process, by factory name.
fn probe_cache() -> &'static Mutex<HashMap<&'static str, bool>> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, bool>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Chooses the encoder from the real registry. Hardware encoders are probed (once per
/// process) by encoding a frame; software encoders are trusted when installed.
///
/// Blocks for up to a few seconds on the first call if hardware encoders are installed: call
/// it (or [`crate::preload`]) outside async runtime threads.
pub fn select_encoder(codec: VideoCodec, forced: Option<&str>) -> Result<EncoderKind> {
    util::init()?;
    let mut failed = |name: &str| -> bool {
        match EncoderKind::preference(codec)
            .iter()
            .find(|k| k.factory_name() == name)
        {
            Some(&kind) if kind.is_hardware() || forced == Some(name) => !probe_cached(kind),
            Some(_) => false,
            None => true,
        }
    };
    let choice = choose_encoder(codec, &util::installed, &mut failed, forced);
    match &choice {
        Ok(kind) => tracing::info!(
            encoder = kind.factory_name(),
            hardware = kind.is_hardware(),
            forced = forced.is_some(),
            "video encoder chosen for {codec:?}"
        ),
        Err(e) => tracing::error!(error = %e, "no video encoder for {codec:?}"),
    }
    choice
}

fn probe_cached(kind: EncoderKind) -> bool {
    let name = kind.factory_name();
    // A poisoned lock only means another probe panicked; the map itself is still valid.
    if let Some(&ok) = probe_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
    {
        return ok;
    }
    let ok = match probe(kind) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(encoder = name, error = %e, "encoder probe failed");
            false
        }
    };
    probe_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, ok);
    ok
}

/// Really starts the encoder: two 320×240 frames through it into a fakesink, to EOS.
pub fn probe(kind: EncoderKind) -> Result<()> {
    util::init()?;
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("videotestsrc")
        .property("num-buffers", 2i32)
        .build()
        .map_err(|_| PipelineError::MissingElement("videotestsrc".into()))?;
    let caps = util::capsfilter(
        gst::Caps::builder("video/x-raw")
            .field("width", 320i32)
            .field("height", 240i32)
            .field("framerate", gst::Fraction::new(15, 1))
            .build(),
    )?;
    let convert = util::make("videoconvert")?;
    let enc = build_encoder(kind, &VideoProfile::P240)?;
    let sink = util::make("fakesink")?;
    pipeline.add_many([&src, &caps, &convert, &enc, &sink])?;
    util::link_chain(&[&src, &caps, &convert, &enc, &sink])?;
    let result = crate::bus::run_to_eos(&pipeline, Duration::from_secs(5));
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Creates and configures the encoder element for a profile.
pub(crate) fn build_encoder(kind: EncoderKind, profile: &VideoProfile) -> Result<gst::Element> {
    let enc = util::make(kind.factory_name())?;
    util::set_props(&enc, &kind.settings(profile))?;
    Ok(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(
        codec: VideoCodec,
        installed: &[&str],
        failed: &[&str],
        forced: Option<&str>,
    ) -> Result<EncoderKind> {
        let mut asked = Vec::new();
        let r = choose_encoder(
            codec,
            &|n| installed.contains(&n),
            &mut |n| {
                asked.push(n.to_owned());
                failed.contains(&n)
            },
            forced,
        );
        // Only installed encoders are ever probed.
        assert!(
            asked.iter().all(|n| installed.contains(&n.as_str())),
            "{asked:?}"
        );
        r
    }

    #[test]
    fn each_hardware_encoder_wins_when_it_works() {
        for (i, kind) in H264_PREFERENCE.iter().enumerate() {
            // Everything installed; all better-ranked ones fail their probe.
            let all: Vec<&str> = H264_PREFERENCE.iter().map(|k| k.factory_name()).collect();
            let failed: Vec<&str> = all[..i].to_vec();
            assert_eq!(pick(VideoCodec::H264, &all, &failed, None), Ok(*kind));
        }
    }

    #[test]
    fn hardware_preferred_over_software() {
        let r = pick(
            VideoCodec::H264,
            &["x264enc", "vah264enc", "openh264enc"],
            &[],
            None,
        );
        assert_eq!(r, Ok(EncoderKind::VaH264));
        assert!(EncoderKind::VaH264.is_hardware());
    }

    #[test]
    fn failed_hardware_falls_back_to_x264() {
        let r = pick(
            VideoCodec::H264,
            &["nvh264enc", "x264enc"],
            &["nvh264enc"],
            None,
        );
        assert_eq!(r, Ok(EncoderKind::X264));
    }

    #[test]
    fn this_machine_situation_no_hardware() {
        let r = pick(
            VideoCodec::H264,
            &["x264enc", "openh264enc", "vp8enc"],
            &[],
            None,
        );
        assert_eq!(r, Ok(EncoderKind::X264));
    }

    #[test]
    fn openh264_when_no_x264() {
        assert_eq!(
            pick(VideoCodec::H264, &["openh264enc"], &[], None),
            Ok(EncoderKind::OpenH264)
        );
    }

    #[test]
    fn nothing_installed_is_a_typed_error_listing_reasons() {
        match pick(VideoCodec::H264, &[], &[], None) {
            Err(PipelineError::NoEncoder { tried, .. }) => {
                assert_eq!(tried.len(), H264_PREFERENCE.len());
                assert!(tried.iter().all(|t| t.ends_with("not installed")));
            }
            other => panic!("{other:?}"),
        }
        match pick(VideoCodec::H264, &["vah264enc"], &["vah264enc"], None) {
            Err(PipelineError::NoEncoder { tried, .. }) => {
                assert!(tried.contains(&"vah264enc: probe failed".to_owned()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vp8_branches() {
        assert_eq!(
            pick(VideoCodec::Vp8, &["vp8enc", "x264enc"], &[], None),
            Ok(EncoderKind::Vp8)
        );
        assert!(matches!(
            pick(VideoCodec::Vp8, &["x264enc"], &[], None),
            Err(PipelineError::NoEncoder { .. })
        ));
    }

    #[test]
    fn forced_encoder_branches() {
        let all = ["nvh264enc", "x264enc", "openh264enc", "vp8enc"];
        // Forced software wins over working hardware.
        assert_eq!(
            pick(VideoCodec::H264, &all, &[], Some("openh264enc")),
            Ok(EncoderKind::OpenH264)
        );
        // Forced but missing: error, no silent fallback.
        assert_eq!(
            pick(VideoCodec::H264, &["x264enc"], &[], Some("vah264enc")),
            Err(PipelineError::EncoderNotInstalled("vah264enc".into()))
        );
        // Forced but its probe failed.
        assert_eq!(
            pick(VideoCodec::H264, &all, &["nvh264enc"], Some("nvh264enc")),
            Err(PipelineError::EncoderProbeFailed("nvh264enc".into()))
        );
        // Forced name of another codec or unknown.
        assert!(matches!(
            pick(VideoCodec::H264, &all, &[], Some("vp8enc")),
            Err(PipelineError::UnknownEncoder { .. })
        ));
        assert!(matches!(
            pick(VideoCodec::Vp8, &all, &[], Some("bogus")),
            Err(PipelineError::UnknownEncoder { .. })
        ));
    }

    #[test]
    fn settings_follow_profile() {
        let p = VideoProfile::P720;
        let x = EncoderKind::X264.settings(&p);
        assert!(x.contains(&("bitrate", "1500".into())));
        assert!(x.contains(&("key-int-max", "30".into())));
        assert!(x.contains(&("tune", "zerolatency".into())));
        assert!(x.contains(&("speed-preset", "ultrafast".into())));
        let small = EncoderKind::X264.settings(&VideoProfile::P240);
        assert!(small.contains(&("speed-preset", "veryfast".into())));
        let v = EncoderKind::Vp8.settings(&p);
        assert!(v.contains(&("target-bitrate", "1500000".into())));
        for k in H264_PREFERENCE.iter().chain(&VP8_PREFERENCE) {
            assert!(!k.settings(&p).is_empty());
            assert!(EncoderKind::preference(k.codec()).contains(k));
        }
    }
}
