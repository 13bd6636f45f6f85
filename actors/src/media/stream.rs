//! `RemoteStreamActor`: one per receive pipeline, the child that watches it.
//!
//! A receive pipeline can fail on its own (a decoder error on a corrupt keyframe, a sink that
//! cannot write): GStreamer reports it on the pipeline's bus, the pipeline's bus thread turns
//! it into [`PipelineEvent::Error`], and this actor reports [`StreamFailed`] to its client
//! actor and stops. Its supervisor is the client's [`crate::core::ClientCore`]: it rebuilds
//! the pipeline within a restart budget and renegotiates the link, so the new pipeline gets a
//! new peer connection (a decoder that starts fresh needs a keyframe, which the new
//! subscription asks for). The actor also reports when it dies itself (a panic): its `Drop`
//! sends the same report, as the peer connection actors do.
//!
//! Local streams are supervised where they are created (the engine's `LocalStream`): their
//! pipeline is rebuilt in place with the same tracks and continuous RTP sequence numbers, so
//! their peer connections carry on and nothing is renegotiated.

use actix::prelude::*;
use rtcroom_pipelines::PipelineEvent;

use crate::core::LinkKey;
use crate::media::PcId;
use crate::media::remote::PipelineEvents;

/// A receive pipeline failed (or its watcher died): rebuild it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StreamFailed {
    /// The link it belongs to.
    pub key: LinkKey,
    /// Which pipeline of the link (the id its build was asked with).
    pub pipeline: PcId,
    /// What failed.
    pub error: String,
}

/// The pipeline ends on purpose (unsubscribe, leave): stop watching without a report.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopStream;

/// Watches one receive pipeline; see the module documentation.
pub struct RemoteStreamActor {
    key: LinkKey,
    pipeline: PcId,
    events: Option<PipelineEvents>,
    owner: Recipient<StreamFailed>,
    /// Ended quietly or reported already: the `Drop` report is not needed.
    done: bool,
    span: tracing::Span,
}

impl RemoteStreamActor {
    /// A watcher for the pipeline `pipeline` of link `key`, reporting to `owner`.
    pub fn new(
        key: LinkKey,
        pipeline: PcId,
        events: PipelineEvents,
        owner: Recipient<StreamFailed>,
        span: tracing::Span,
    ) -> Self {
        RemoteStreamActor {
            key,
            pipeline,
            events: Some(events),
            owner,
            done: false,
            span,
        }
    }

    fn report(&mut self, error: String) {
        if !self.done {
            self.done = true;
            self.owner.do_send(StreamFailed {
                key: self.key.clone(),
                pipeline: self.pipeline,
                error,
            });
        }
    }
}

impl Actor for RemoteStreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(events) = self.events.take() {
            ctx.add_stream(futures_util::stream::unfold(events, |mut rx| async move {
                rx.recv().await.map(|event| (event, rx))
            }));
        }
    }
}

impl StreamHandler<PipelineEvent> for RemoteStreamActor {
    fn handle(&mut self, event: PipelineEvent, ctx: &mut Self::Context) {
        match event {
            PipelineEvent::Error(e) => {
                tracing::warn!(parent: &self.span, key = ?self.key, error = %e, "receive pipeline failed");
                self.report(e.to_string());
                ctx.stop();
            }
            PipelineEvent::Eos => {
                self.done = true;
                ctx.stop();
            }
            PipelineEvent::Warning(w) => {
                tracing::debug!(parent: &self.span, key = ?self.key, warning = %w, "receive pipeline warning");
            }
            // PipelineEvent is non-exhaustive.
            _ => {}
        }
    }

    /// The pipeline is gone (stopped and dropped): nothing to watch.
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.done = true;
        ctx.stop();
    }
}

impl Handler<StopStream> for RemoteStreamActor {
    type Result = ();

    fn handle(&mut self, _: StopStream, ctx: &mut Self::Context) {
        self.done = true;
        ctx.stop();
    }
}

impl Drop for RemoteStreamActor {
    /// Stopped on purpose, or crashed (this runs while unwinding): a crash is reported like
    /// a pipeline failure, so the stream is rebuilt with a new watcher.
    fn drop(&mut self) {
        self.report("the stream actor stopped unexpectedly".to_owned());
    }
}

/// Fault injection: make a stream actor panic.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CrashStream;

#[cfg(feature = "fault-injection")]
impl Handler<CrashStream> for RemoteStreamActor {
    type Result = ();

    fn handle(&mut self, _: CrashStream, _: &mut Self::Context) {
        panic!("injected stream actor crash");
    }
}
