//! The stream actors: one per pipeline, the children that watch them.
//!
//! ## `RemoteStreamActor`
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
//! ## `LocalStreamActor`
//!
//! One per local stream (capture → encode), created with it. It runs the pump that copies
//! the pipeline's RTP into the stream's tracks and watches the pipeline's bus: a failed
//! pipeline (a device unplugged, a decoding error in a file) is rebuilt in place with the
//! same configuration, within [`RestartBudget`] (3 restarts in 60 s). The tracks stay and
//! RTP sequence numbers and timestamps continue across the rebuild (see
//! [`LocalMedia::pump`]), so peer connections carry on and nothing is renegotiated. A
//! pipeline replaced on purpose (a new video profile) is handed over with [`RunPipeline`].
//! A stream fed by the application is not rebuilt: the application holds the failed
//! pipeline's inputs.

use actix::prelude::*;
use rtcroom_pipelines::PipelineEvent;

use std::sync::{Arc, Weak};

use crate::core::LinkKey;
use crate::media::local::LocalMedia;
use crate::media::remote::PipelineEvents;
use crate::media::{PcId, RestartBudget};

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

/// Run pipeline `epoch` of the stream: pump its RTP into the tracks and watch its events.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunPipeline {
    /// The pipeline's epoch ([`LocalMedia::epoch`]).
    pub epoch: u64,
    /// Its RTP.
    pub rtp: tokio::sync::mpsc::Receiver<rtcroom_pipelines::RtpPacket>,
    /// Its events.
    pub events: PipelineEvents,
}

/// One event of pipeline `epoch`, or its end (`None`).
struct EpochEvent(u64, Option<PipelineEvent>);

/// Supervises one local stream's pipeline; see the module documentation.
pub struct LocalStreamActor {
    /// Held weakly: the actor lives as long as its pipeline's events, and the pipeline as
    /// long as the stream, so a strong reference would keep all three alive for ever.
    media: Weak<LocalMedia>,
    budget: RestartBudget,
    /// A rebuild is running.
    restarting: bool,
    span: tracing::Span,
}

impl LocalStreamActor {
    /// The supervisor of `media`; give it the first pipeline with [`RunPipeline`].
    pub fn new(media: Arc<LocalMedia>, span: tracing::Span) -> Self {
        LocalStreamActor {
            media: Arc::downgrade(&media),
            budget: RestartBudget::default(),
            restarting: false,
            span,
        }
    }

    fn rebuild(&mut self, error: String, ctx: &mut Context<Self>) {
        let Some(media) = self.media.upgrade() else {
            ctx.stop(); // every handle is gone: nothing to rebuild for
            return;
        };
        let config = media.config();
        if matches!(config.source, rtcroom_pipelines::SourceKind::App { .. }) {
            tracing::error!(parent: &self.span, %error, "app-fed local pipeline failed");
            return;
        }
        if !self.budget.allow(std::time::Instant::now()) {
            tracing::error!(parent: &self.span, %error, restarts = self.budget.recent(),
                "local pipeline keeps failing; giving up");
            return;
        }
        tracing::warn!(parent: &self.span, %error, "local pipeline failed; rebuilding it");
        self.restarting = true;
        let rebuild = tokio::task::spawn_blocking(move || media.restart(config));
        ctx.spawn(rebuild.into_actor(self).map(|res, act, ctx| {
            act.restarting = false;
            match res {
                Ok(Ok((epoch, outputs))) => act.run(
                    RunPipeline {
                        epoch,
                        rtp: outputs.rtp,
                        events: outputs.events,
                    },
                    ctx,
                ),
                Ok(Err(e)) => {
                    tracing::error!(parent: &act.span, error = %e, "local pipeline rebuild failed");
                    ctx.stop();
                }
                Err(e) => {
                    tracing::error!(parent: &act.span, error = %e, "local pipeline rebuild panicked");
                    ctx.stop();
                }
            }
        }));
    }

    fn run(&mut self, msg: RunPipeline, ctx: &mut Context<Self>) {
        let RunPipeline { epoch, rtp, events } = msg;
        actix::spawn(LocalMedia::pump(self.media.clone(), rtp, epoch));
        let events = futures_util::stream::unfold(Some(events), move |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(event) => Some((EpochEvent(epoch, Some(event)), Some(rx))),
                None => Some((EpochEvent(epoch, None), None)),
            }
        });
        ctx.add_stream(events);
    }
}

impl Actor for LocalStreamActor {
    type Context = Context<Self>;
}

impl Handler<RunPipeline> for LocalStreamActor {
    type Result = ();

    fn handle(&mut self, msg: RunPipeline, ctx: &mut Self::Context) {
        self.run(msg, ctx);
    }
}

impl StreamHandler<EpochEvent> for LocalStreamActor {
    fn handle(&mut self, EpochEvent(epoch, event): EpochEvent, ctx: &mut Self::Context) {
        let Some(current) = self.media.upgrade().map(|m| m.epoch()) else {
            ctx.stop(); // every handle is gone (its drop stops the pipeline)
            return;
        };
        if epoch != current {
            return; // a pipeline replaced on purpose, or by a rebuild
        }
        match event {
            Some(PipelineEvent::Error(e)) if !self.restarting => self.rebuild(e.to_string(), ctx),
            Some(PipelineEvent::Warning(w)) => {
                tracing::warn!(parent: &self.span, warning = %w, "local pipeline warning");
            }
            // The current pipeline ended (stopped, or a finite source finished): nothing
            // left to supervise.
            None | Some(PipelineEvent::Eos) if !self.restarting => ctx.stop(),
            _ => {}
        }
    }

    /// One pipeline's events ended; the actor lives on for the next one.
    fn finished(&mut self, _: &mut Self::Context) {}
}
