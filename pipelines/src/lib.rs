//! # rtcroom-pipelines
//!
//! GStreamer media pipelines for rtcroom. This crate knows nothing of WebRTC, actors or rooms:
//!
//! * a [`LocalPipeline`] turns a source (test pattern and tone, media file, camera and
//!   microphone, or frames pushed by the application) into RTP packets ([`RtpPacket`]) on a
//!   bounded channel, and takes keyframe requests; with a small stream
//!   ([`LocalConfig::small_video`]) it encodes the video a second time, smaller, into packets
//!   tagged [`Layer::Small`], and either layer can be paused;
//! * a [`RemotePipeline`] takes RTP packets ([`RemotePipeline::push_rtp`]) and plays them,
//!   records them into one file per user (no transcoding), hands decoded frames to the
//!   application, or discards them while counting.
//!
//! Payload types, clock rates and fmtp lines are constants in [`codec`], so the WebRTC layer
//! registers exactly the codecs produced here.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use rtcroom_pipelines::*;
//!
//! # fn main() -> Result<(), PipelineError> {
//! preload()?; // once at start-up, off the async runtime
//! let (remote, _remote_events) = RemotePipeline::start(RemoteConfig::new(RemoteOutput::Discard))?;
//! let (local, mut out) = LocalPipeline::start(LocalConfig::new(SourceKind::TestPattern {
//!     duration: None,
//! }))?;
//! // The WebRTC layer writes these to its tracks (PT/clock rate in `packet.codec`); here they
//! // go straight into the remote side.
//! for _ in 0..20 {
//!     let packet = out.rtp.blocking_recv().ok_or(PipelineError::Stopped)?;
//!     remote.push_rtp(packet.data)?;
//! }
//! local.request_keyframe(); // on RTCP PLI/FIR
//! local.stop()?;
//! remote.stop()?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Threads and blocking
//!
//! The API is synchronous. Building, stopping and dropping a pipeline change GStreamer states,
//! which blocks for tens to hundreds of milliseconds (more on first plugin load): async callers
//! run those in `tokio::task::spawn_blocking`, and call [`preload`] once at start-up.
//! `push_rtp`, `request_keyframe` and the channel ends never block. Appsink callbacks run on
//! GStreamer streaming threads and only `try_send`.
//!
//! ## Errors
//!
//! Building returns [`PipelineError`]; failures while running arrive as
//! [`PipelineEvent::Error`] on the pipeline's event channel. Teardown (EOS, then `Null`)
//! happens in `stop()` and in `Drop`, so recordings are finalised either way.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bus;
pub mod codec;
pub mod encoder;
mod error;
pub mod level;
pub mod profiles;
pub mod sei;
mod sink;
mod source;
mod util;

pub use bus::PipelineEvent;
pub use codec::{AudioCodec, Codec, Layer, MediaKind, RtpPacket, VideoCodec};
pub use encoder::{EncoderKind, choose_encoder, select_encoder};
pub use error::{PipelineError, Result};
pub use profiles::{AudioProfile, VideoProfile};
pub use sei::{SeiHandler, SeiMessage};
pub use sink::{
    DEFAULT_FASTSTART_PACKETS, DEFAULT_JITTER_LATENCY, DecodedFrame, FrameCallback, FrameInfo,
    MP4_FRAGMENT_MS, RecordFormat, RemoteConfig, RemoteOutput, RemotePipeline, RemoteStats,
};
pub use source::{
    AppAudioFormat, AppAudioInput, AppVideoFormat, AppVideoInput, AudioTrackConfig,
    DEFAULT_RTP_QUEUE, EncoderControl, LocalConfig, LocalOutputs, LocalPipeline, LocalStats,
    RawVideoFormat, STOP_TIMEOUT, SourceKind, VideoTrackConfig, microphone_factory,
};

/// Initialises GStreamer, loads every element factory the pipelines use and probes installed
/// hardware encoders, so that the first stream does not pay for it. Blocks (hundreds of ms):
/// call it at start-up, outside async runtime threads. Missing optional plugins are not an
/// error here; returns the factories that are missing.
pub fn preload() -> Result<Vec<&'static str>> {
    use gst::prelude::*;
    util::init()?;
    let mut missing = Vec::new();
    for name in util::USED_FACTORIES {
        match gst::ElementFactory::find(name).map(|f| f.load()) {
            Some(Ok(_)) => {}
            _ => missing.push(*name),
        }
    }
    for codec in [VideoCodec::H264, VideoCodec::Vp8] {
        // Probes hardware encoders once; the result is cached for later streams.
        let _ = select_encoder(codec, None);
    }
    tracing::info!(?missing, "GStreamer elements preloaded");
    Ok(missing)
}

// Compile-time check: every handle can move between threads and async tasks.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<LocalPipeline>();
    send_sync::<RemotePipeline>();
    send_sync::<EncoderControl>();
    send_sync::<AppVideoInput>();
    send_sync::<AppAudioInput>();
    send_sync::<RtpPacket>();
    send_sync::<PipelineEvent>();
};
