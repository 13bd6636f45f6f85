//! The crate's one error type.

use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Everything that can go wrong building or running a pipeline.
///
/// Each variant says whether retrying can help. Errors raised by GStreamer while the pipeline
/// runs arrive as [`PipelineError::Stream`] through the pipeline's event channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// `gst::init` failed (no GStreamer installation). Not retryable.
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    /// A GStreamer element this pipeline needs is not installed. Not retryable without
    /// installing the plugin.
    #[error("GStreamer element `{0}` is not installed")]
    MissingElement(String),
    /// No encoder for the codec is installed and working. Not retryable.
    #[error("no working {codec} encoder (tried: {tried:?})")]
    NoEncoder {
        /// The codec asked for.
        codec: String,
        /// Encoders considered, in order, with why each was not taken.
        tried: Vec<String>,
    },
    /// The configuration forces an encoder that rtcroom does not know for this codec.
    #[error("forced encoder `{name}` is not a known {codec} encoder")]
    UnknownEncoder {
        /// The forced factory name.
        name: String,
        /// The codec asked for.
        codec: String,
    },
    /// The configuration forces an encoder that is not installed.
    #[error("forced encoder `{0}` is not installed")]
    EncoderNotInstalled(String),
    /// The configuration forces an encoder that failed when started.
    #[error("forced encoder `{0}` failed to start when probed")]
    EncoderProbeFailed(String),
    /// The configuration is inconsistent (e.g. H.264 into WebM, no track at all).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Building or linking the pipeline failed (a bug or a broken installation).
    #[error("failed to build the pipeline: {0}")]
    Build(String),
    /// A state change was refused (device busy, file not found, …). Retryable if the cause is
    /// transient.
    #[error("pipeline state change failed: {0}")]
    StateChange(String),
    /// An error posted on the bus while running. The pipeline is unusable afterwards.
    #[error("stream error from `{element}`: {message}")]
    Stream {
        /// Name of the element that posted it.
        element: String,
        /// The GStreamer error message.
        message: String,
        /// GStreamer's debug detail, if any.
        debug: Option<String>,
    },
    /// Waiting for a pipeline condition (EOS, preroll) took longer than allowed.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The pipeline was already stopped.
    #[error("the pipeline is stopped")]
    Stopped,
    /// An RTP packet pushed into a remote pipeline was malformed (not retryable for that packet).
    #[error("malformed RTP packet: {0}")]
    BadRtp(&'static str),
    /// An RTP packet carried a payload type no track of this pipeline expects.
    #[error("no track for RTP payload type {0}")]
    UnknownPayloadType(u8),
    /// An appsrc refused a buffer (flushing or EOS already sent).
    #[error("buffer refused: {0}")]
    Flow(String),
}

impl From<gst::glib::BoolError> for PipelineError {
    fn from(e: gst::glib::BoolError) -> Self {
        PipelineError::Build(e.to_string())
    }
}

impl From<gst::StateChangeError> for PipelineError {
    fn from(e: gst::StateChangeError) -> Self {
        PipelineError::StateChange(e.to_string())
    }
}
