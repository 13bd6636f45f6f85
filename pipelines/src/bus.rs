//! Bus handling: one thread per pipeline turns bus messages into typed [`PipelineEvent`]s for
//! the owner, records EOS/errors for `stop()`, and restarts looping files.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{PipelineError, Result};

/// Something the owner of a pipeline should know about. Sent on the pipeline's event channel
/// from the pipeline's bus thread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineEvent {
    /// Every branch reached its end: a finite source finished, or `stop()` drained it. Files
    /// being recorded are complete when this fires.
    Eos,
    /// The pipeline failed; it produces nothing more. Fires at most once per pipeline.
    Error(PipelineError),
    /// GStreamer warned (e.g. a configured track is missing from a media file).
    Warning(String),
}

/// Name of the application message that wakes the bus thread to exit.
const SHUTDOWN: &str = "rtcroom-bus-shutdown";

#[derive(Default)]
struct Status {
    eos: bool,
    error: Option<PipelineError>,
}

#[derive(Default)]
struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        // A poisoned lock only means a panic elsewhere; the flags are still meaningful.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Watches a pipeline's bus on a dedicated thread until dropped.
pub(crate) struct BusWatch {
    shared: Arc<Shared>,
    bus: gst::Bus,
    thread: Option<JoinHandle<()>>,
}

impl BusWatch {
    /// Starts the thread. With `looping`, a segment-done restarts the media from 0 with a
    /// non-flushing segment seek, so running time (and RTP timestamps) keep increasing.
    pub(crate) fn spawn(
        pipeline: &gst::Pipeline,
        events: UnboundedSender<PipelineEvent>,
        looping: bool,
    ) -> Result<Self> {
        // A pipeline always has a bus.
        let bus = pipeline.bus().expect("pipeline has a bus");
        let shared = Arc::<Shared>::default();
        let weak = pipeline.downgrade();
        let thread = {
            let (bus, shared) = (bus.clone(), shared.clone());
            std::thread::Builder::new()
                .name("rtcroom-gst-bus".into())
                .spawn(move || bus_loop(bus, shared, events, weak, looping))
                .map_err(|e| PipelineError::Build(format!("cannot spawn bus thread: {e}")))?
        };
        Ok(Self {
            shared,
            bus,
            thread: Some(thread),
        })
    }

    /// The error to report for a failed state change: the element's own error from the bus
    /// when it arrives within a moment (it says which device or file), else the bare failure.
    pub(crate) fn state_change_error(&self, e: gst::StateChangeError) -> PipelineError {
        match self.wait_eos(Duration::from_millis(500)) {
            Err(err @ PipelineError::Stream { .. }) => err,
            _ => PipelineError::StateChange(e.to_string()),
        }
    }

    /// Stops `pipeline` cleanly: unless it already ended or failed, `send_eos` ends its
    /// streams and the end of stream is awaited (files get finalised) for at most `timeout`;
    /// then the pipeline goes to `Null` whatever happened.
    pub(crate) fn shutdown(
        &self,
        pipeline: &gst::Pipeline,
        timeout: Duration,
        send_eos: impl FnOnce(),
    ) -> Result<()> {
        let ended = {
            let st = self.shared.status();
            st.eos || st.error.is_some()
        };
        let drained = if ended {
            Ok(())
        } else {
            send_eos();
            self.wait_eos(timeout)
        };
        let nulled = pipeline.set_state(gst::State::Null);
        drained?;
        nulled?;
        Ok(())
    }

    /// Waits until EOS (Ok) or an error (Err), at most `timeout`.
    pub(crate) fn wait_eos(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status();
        loop {
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.eos {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError::Timeout(timeout, "end of stream"));
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for BusWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self
            .bus
            .post(gst::message::Application::new(gst::Structure::new_empty(
                SHUTDOWN,
            )));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bus_loop(
    bus: gst::Bus,
    shared: Arc<Shared>,
    events: UnboundedSender<PipelineEvent>,
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    looping: bool,
) {
    use gst::MessageView;
    while !shared.stop.load(Ordering::SeqCst) {
        // Bounded wait so that a flushing bus (pipeline set to Null) cannot hang the thread.
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(500)) else {
            continue;
        };
        match msg.view() {
            MessageView::Eos(_) => {
                shared.status().eos = true;
                shared.changed.notify_all();
                let _ = events.send(PipelineEvent::Eos);
            }
            MessageView::Error(e) => {
                let err = stream_error(e);
                tracing::error!(error = %err, "pipeline error");
                let first = {
                    let mut st = shared.status();
                    let first = st.error.is_none();
                    st.error.get_or_insert(err.clone());
                    first
                };
                shared.changed.notify_all();
                if first {
                    let _ = events.send(PipelineEvent::Error(err));
                }
            }
            MessageView::Warning(w) => {
                let text = format!("{}: {}", src_name(&msg), w.error());
                tracing::warn!(warning = %text, debug = ?w.debug(), "pipeline warning");
                let _ = events.send(PipelineEvent::Warning(text));
            }
            MessageView::SegmentDone(_) if looping => {
                if let Some(p) = pipeline.upgrade() {
                    tracing::debug!("looping media file");
                    if let Err(e) = p.seek(
                        1.0,
                        gst::SeekFlags::SEGMENT,
                        gst::SeekType::Set,
                        gst::ClockTime::ZERO,
                        gst::SeekType::None,
                        gst::ClockTime::NONE,
                    ) {
                        tracing::warn!(error = %e, "loop seek failed");
                    }
                }
            }
            MessageView::Application(a) if a.structure().is_some_and(|s| s.name() == SHUTDOWN) => {
                break;
            }
            _ => {}
        }
    }
}

fn src_name(msg: &gst::Message) -> String {
    msg.src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into())
}

fn stream_error(e: &gst::message::Error) -> PipelineError {
    PipelineError::Stream {
        element: e
            .src()
            .map(|s| s.name().to_string())
            .unwrap_or_else(|| "pipeline".into()),
        message: e.error().to_string(),
        debug: e.debug().map(|d| d.to_string()),
    }
}

/// Plays a (finite) pipeline to EOS on the calling thread, failing on error or timeout.
pub(crate) fn run_to_eos(pipeline: &gst::Pipeline, timeout: Duration) -> Result<()> {
    // A pipeline always has a bus.
    let bus = pipeline.bus().expect("pipeline has a bus");
    pipeline.set_state(gst::State::Playing)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait =
            gst::ClockTime::from_nseconds(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX));
        let Some(msg) =
            bus.timed_pop_filtered(wait, &[gst::MessageType::Eos, gst::MessageType::Error])
        else {
            return Err(PipelineError::Timeout(timeout, "end of stream"));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => return Err(stream_error(e)),
            _ => {}
        }
    }
}
