//! Where the actors run: one dedicated engine thread with an actix `System`, shared by every
//! client of the process.
//!
//! Why a thread of its own rather than the user's runtime: actix actors need an actix
//! arbiter (a single-threaded tokio runtime with a `LocalSet`), while users call the engine
//! from whatever runtime they have (`#[tokio::main]`, multi-threaded by default). Messages to
//! an actor's `Addr` and their replies are runtime-agnostic channels, so the user's `async fn`
//! calls simply await replies from the engine thread. The engine thread is started on the
//! first `create_client` and lives as long as the process; a panic inside an actor is
//! contained to that actor's task and does not stop the thread.

use std::sync::OnceLock;

use actix::ArbiterHandle;
use rtcroom_protocol::{ErrorCode, RtcError};

static ENGINE: OnceLock<Result<ArbiterHandle, String>> = OnceLock::new();

/// rustls picks its crypto provider from its features only when exactly one is compiled in;
/// this binary has two (webrtc-rs brings ring), so one is installed for the whole process:
/// aws-lc-rs, the one the room server (`rtcroom_server::install_crypto_provider`), the
/// signalling TLS (`rtcroom_actors::tls`) and str0m use, so the process has one provider
/// whichever of the engine and the server starts first. A program that installed its own
/// first keeps it.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn start() -> Result<ArbiterHandle, String> {
    install_crypto_provider();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rtcroom-engine".into())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(async {
                let _ = tx.send(actix::Arbiter::current());
            });
            if let Err(e) = system.run() {
                tracing::error!(error = %e, "rtcroom engine thread stopped");
            }
        })
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    // Load GStreamer in the background, so the first stream does not wait for it.
    let _ = std::thread::Builder::new()
        .name("rtcroom-preload".into())
        .spawn(preload_media);
    rx.recv()
        .map_err(|_| "the engine thread stopped while starting".to_owned())
}

/// The engine's arbiter, started on first use.
pub(crate) fn engine() -> Result<ArbiterHandle, RtcError> {
    ENGINE
        .get_or_init(start)
        .clone()
        .map_err(|e| RtcError::new(ErrorCode::Unknown, e))
}

/// Load GStreamer's plugins once (blocking, hundreds of ms the first time). Called from
/// pipeline-building threads, never from the engine thread.
pub(crate) fn preload_media() {
    static PRELOADED: OnceLock<()> = OnceLock::new();
    PRELOADED.get_or_init(|| {
        if let Err(e) = rtcroom_pipelines::preload() {
            tracing::warn!(error = %e, "GStreamer preload failed");
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_engine_installs_the_same_provider_as_the_server() {
        super::install_crypto_provider();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let aws = rustls::crypto::aws_lc_rs::default_provider();
        let ring = rustls::crypto::ring::default_provider();
        let groups = |p: &rustls::crypto::CryptoProvider| -> Vec<String> {
            p.kx_groups
                .iter()
                .map(|g| format!("{:?}", g.name()))
                .collect()
        };
        // aws-lc-rs offers the post-quantum hybrid group, ring does not: the two differ.
        assert_ne!(groups(&aws), groups(&ring));
        assert_eq!(groups(installed), groups(&aws));
    }
}
