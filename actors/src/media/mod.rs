//! The media plane of a client: local streams, remote streams, and the peer connections
//! that carry them to and from the SFU.
//!
//! - [`local::LocalMedia`]: a capture/encode pipeline and its webrtc-rs tracks.
//! - [`remote::RemoteMedia`]: a receive pipeline (play / record / frames / discard).
//! - [`peer::PeerConnectionActor`]: one webrtc-rs peer connection (uplink or downlink).
//! - [`link::LinkHealth`]: the rebuild-or-give-up state machine of a failing link.
//! - [`stream::RemoteStreamActor`]: watches one receive pipeline and reports its failure;
//!   [`stream::LocalStreamActor`]: pumps and supervises one local stream's pipeline.

pub mod link;
pub mod local;
pub mod peer;
pub mod remote;
pub mod stream;

pub use link::{
    LinkAction, LinkHealth, LinkKind, PIPELINE_RESTART_WINDOW, PIPELINE_RESTARTS, RestartBudget,
};
pub use local::{LocalMedia, LocalMediaStats};
pub use peer::{PcEvent, PcEventKind, PcId, PcRole, PeerConnectionActor, TransportStats};
pub use remote::{FrameHandler, PipelineEvents, RemoteMedia, RemoteMediaStats, SubscribeOutput};
pub use stream::{LocalStreamActor, RemoteStreamActor, RunPipeline, StopStream, StreamFailed};
