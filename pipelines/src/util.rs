//! Small GStreamer helpers shared by the pipelines.

use gst::prelude::*;

use crate::error::{PipelineError, Result};

/// Initialises GStreamer (idempotent, cheap after the first call).
pub fn init() -> Result<()> {
    gst::init().map_err(|e| PipelineError::Init(e.to_string()))
}

/// Creates an element, mapping a missing plugin to [`PipelineError::MissingElement`].
pub(crate) fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| PipelineError::MissingElement(factory.to_owned()))
}

/// Whether the registry has an element factory of this name.
pub(crate) fn installed(factory: &str) -> bool {
    gst::ElementFactory::find(factory).is_some()
}

/// Sets properties from their string form (`"zerolatency"`, `"1500"`, `"true"`).
///
/// A property the element does not have is skipped with a debug log: encoder properties differ
/// between plugin versions, and a missing tuning knob must not stop a stream. A value that
/// does not parse for the property's type is an error (a bug in our tables).
pub(crate) fn set_props(el: &gst::Element, props: &[(&str, String)]) -> Result<()> {
    for (name, value) in props {
        let Some(pspec) = el.find_property(name) else {
            tracing::debug!(element = %el.name(), property = name, "property not present, skipped");
            continue;
        };
        let v =
            <gst::glib::Value as gst::prelude::GstValueExt>::deserialize(value, pspec.value_type())
                .map_err(|_| {
                    PipelineError::Build(format!("{}: bad value `{value}` for `{name}`", el.name()))
                })?;
        // The value was deserialised for exactly this property's type, so this cannot panic.
        el.set_property_from_value(name, &v);
    }
    Ok(())
}

/// Links a chain of elements, with the element names in the error.
pub(crate) fn link_chain(elements: &[&gst::Element]) -> Result<()> {
    for pair in elements.windows(2) {
        pair[0].link(pair[1]).map_err(|_| {
            PipelineError::Build(format!(
                "cannot link {} -> {}",
                pair[0].name(),
                pair[1].name()
            ))
        })?;
    }
    Ok(())
}

/// A capsfilter element with the given caps.
pub(crate) fn capsfilter(caps: gst::Caps) -> Result<gst::Element> {
    gst::ElementFactory::make("capsfilter")
        .property("caps", caps)
        .build()
        .map_err(|_| PipelineError::MissingElement("capsfilter".into()))
}

/// Every element factory the pipelines may create, for [`crate::preload`].
pub(crate) const USED_FACTORIES: &[&str] = &[
    "videotestsrc",
    "audiotestsrc",
    "uridecodebin",
    "v4l2src",
    "pulsesrc",
    "alsasrc",
    "appsrc",
    "appsink",
    "queue",
    "tee",
    "valve",
    "capsfilter",
    "videoconvert",
    "videoscale",
    "videorate",
    "audioconvert",
    "audioresample",
    "x264enc",
    "openh264enc",
    "vp8enc",
    "opusenc",
    "h264parse",
    "opusparse",
    "rtph264pay",
    "rtpvp8pay",
    "rtpopuspay",
    "rtpjitterbuffer",
    "rtph264depay",
    "rtpvp8depay",
    "rtpopusdepay",
    "avdec_h264",
    "openh264dec",
    "vp8dec",
    "opusdec",
    "matroskamux",
    "mp4mux",
    "webmmux",
    "filesink",
    "fakesink",
    "autovideosink",
    "autoaudiosink",
];

/// Fault injection: post an element error on `pipeline`'s bus, as a failing element would.
pub(crate) fn post_test_error(pipeline: &gst::Pipeline) {
    let msg = gst::message::Error::builder(gst::CoreError::Failed, "injected failure")
        .src(pipeline)
        .build();
    let _ = pipeline.post_message(msg);
}
