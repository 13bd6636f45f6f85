//! Running the server: bind, start the actors, serve HTTP + WebSocket, shut down cleanly.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::registry::{Registry, RoomContext};
use crate::session::SessionShared;
use crate::webhook::WebhookActor;

/// rustls (https webhooks) needs one process-wide crypto provider when several are compiled
/// in (the engine's webrtc-rs brings ring): install aws-lc-rs, already used for DTLS, unless
/// the program installed one first. The engine installs the same one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// How long to let close frames flush after telling sessions to close.
const CLOSE_FLUSH: Duration = Duration::from_millis(200);

async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    shared: web::Data<Arc<SessionShared>>,
) -> Result<HttpResponse, actix_web::Error> {
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !crate::web::origin_allowed(origin, &shared.config.web.allowed_origins) {
        tracing::debug!(?origin, "websocket refused: origin not allowed");
        return Ok(HttpResponse::Forbidden()
            .content_type("text/plain")
            .body("this origin may not open the signalling WebSocket (web.allowed_origins)\n"));
    }
    crate::session::start(&req, stream, shared.get_ref().clone()).await
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn metrics_route(shared: web::Data<Arc<SessionShared>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(shared.metrics.render())
}

/// Pending connections the signalling listener queues (the kernel caps it at
/// `net.core.somaxconn`, 4096 on current kernels). std's `TcpListener::bind` uses 128: a burst
/// of 200 clients connecting at once overflowed it and the rest waited a whole SYN
/// retransmission (1 s).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Bind the signalling listener on `addr` (port 0 picks a free port) with
/// [`LISTEN_BACKLOG`]. `addr` may be a host name.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match bind_one(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As std does: a restarted server can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The rustls server configuration for `tls`: the certificate chain and key from their PEM
/// files, HTTP/1.1 only (the WebSocket upgrade needs it).
pub fn tls_server_config(tls: &crate::config::TlsConfig) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tls.{what} {}: {e}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|i| i.collect())
        .map_err(|e| invalid("cert_file", &tls.cert_file, &e))?;
    if certs.is_empty() {
        return Err(invalid(
            "cert_file",
            &tls.cert_file,
            &"no certificate in it",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| invalid("key_file", &tls.key_file, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| std::io::Error::other(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| invalid("key_file", &tls.key_file, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serve on `listener` until `shutdown` resolves, then close every session and stop within
/// the configured bound. Must run inside an actix `System`.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_with(
        config,
        listener,
        metrics,
        async {
            shutdown.await;
            Stop::Graceful
        },
        |_| {},
    )
    .await
}

/// How a server stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Close every session (1001), leave the cluster, finish in-flight work.
    Graceful,
    /// As if the process were killed: no close frames, no goodbye to the cluster (tests of
    /// failover).
    Abrupt,
}

/// [`run`], handing the room registry to `ready` once the server is up.
async fn run_with(
    config: ServerConfig,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = Stop>,
    ready: impl FnOnce(Arc<Registry>),
) -> std::io::Result<()> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    install_crypto_provider();
    let tls = config.tls.as_ref().map(tls_server_config).transpose()?;
    if config.web.dev_usersig {
        tracing::warn!(
            "GET /dev/usersig hands out UserSigs to anyone who asks (web.dev_usersig): \
             development only"
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = config.workers.unwrap_or(cores).max(1);
    let webhook_arbiter = Arbiter::new();
    let webhooks = config.webhook.clone().map(|w| {
        let m = metrics.clone();
        WebhookActor::start_in_arbiter(&webhook_arbiter.handle(), move |_| WebhookActor::new(w, m))
    });
    let media = crate::media::MediaPlane::start(&config.media)?;
    metrics.attach_media(media.stats().clone());
    let cluster = crate::cluster::Cluster::new(&config, listener.local_addr()?, metrics.clone())?;
    let heartbeat = cluster.clone().map(|cluster| {
        actix_web::rt::spawn(async move {
            // The first heartbeat ran before the server started serving.
            let mut every = actix_web::rt::time::interval(cluster.heartbeat_every());
            every.tick().await;
            loop {
                every.tick().await;
                cluster.heartbeat().await;
            }
        })
    });
    if let Some(c) = &cluster {
        // Registered (or not, if Redis is unreachable: the heartbeat keeps trying) before
        // the first join can arrive.
        c.heartbeat().await;
        tracing::info!(node = c.id(), url = c.url(), "cluster node");
    }
    let room_ctx = RoomContext {
        limits: config.room_limits(),
        metrics: metrics.clone(),
        webhooks,
        media: Some(media.clone()),
        cluster: cluster.clone(),
    };
    // One room shard per HTTP worker, on the worker's own thread: a join whose room lives on
    // its connection's thread costs no thread switch (measured: each switch a burst of joins
    // makes costs more than the join itself).
    let registry = Registry::new(room_ctx, workers);
    if let Some(mut events) = media.take_events() {
        let registry = registry.clone();
        actix_web::rt::spawn(async move {
            use crate::media::MediaEvent;
            use crate::room::LayerEvent;
            while let Some(event) = events.recv().await {
                match event {
                    MediaEvent::PeerClosed { peer, reason } => {
                        tracing::debug!(peer, ?reason, "media peer closed on its own");
                        registry.peer_closed(peer);
                    }
                    MediaEvent::LayerChanged {
                        peer,
                        layer,
                        layers,
                        bandwidth,
                    } => registry.peer_layer_event(
                        peer,
                        LayerEvent::Changed {
                            layer,
                            layers,
                            bandwidth,
                        },
                    ),
                    MediaEvent::LayersWanted { peer, layers } => {
                        registry.peer_layer_event(peer, LayerEvent::Wanted(layers))
                    }
                }
            }
        });
    }
    let shared = Arc::new(SessionShared {
        config: config.clone(),
        metrics,
        registry: registry.clone(),
        replays: crate::admin::replay_cache(),
    });
    let data = web::Data::new(shared);
    let whip = web::Data::new(crate::whip::WhipResources::new(
        config.limits.max_whip_resources,
    ));
    let shard_registry = registry.clone();
    let server = HttpServer::new(move || {
        // Called once on each worker's thread as it starts (again if a worker is restarted).
        shard_registry.start_shard_here();
        App::new()
            .app_data(data.clone())
            .app_data(whip.clone())
            .configure(crate::whip::configure)
            .app_data(web::PayloadConfig::new(crate::admin::MAX_BODY))
            .route("/ws", web::get().to(ws_route))
            .route(
                crate::cascade::CASCADE_PATH,
                web::get().to(crate::cascade::origin_route),
            )
            .route("/", web::get().to(crate::web::demo_page))
            .route("/sdk/trtc.js", web::get().to(crate::web::sdk_js))
            .route("/sdk/trtc.mjs", web::get().to(crate::web::sdk_mjs))
            .route("/dev/usersig", web::get().to(crate::web::dev_usersig))
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics_route))
            .route("/admin", web::post().to(crate::admin::admin_header))
            .route(
                "/admin/{action}",
                web::post().to(crate::admin::admin_action),
            )
    })
    .workers(workers)
    // Signalling frames are small and latency-bound: no Nagle delay behind an unacked write.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(config.timeouts.shutdown_timeout_s);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    let server_task = actix_web::rt::spawn(server);
    ready(registry.clone());
    let how = shutdown.await;
    if let Some(h) = heartbeat {
        h.abort();
    }
    if how == Stop::Abrupt {
        tracing::info!("stopping abruptly (as if killed)");
        handle.stop(false).await;
        media.shutdown();
        webhook_arbiter.stop();
        return Ok(());
    }
    tracing::info!("shutting down: closing sessions");
    if let Some(c) = &cluster {
        c.deregister().await;
    }
    registry.shutdown();
    actix_web::rt::time::sleep(CLOSE_FLUSH).await;
    handle.stop(true).await;
    let _ = server_task.await;
    media.shutdown();
    webhook_arbiter.stop();
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A server running on its own thread (for tests, benchmarks and the in-process demo).
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    metrics: Arc<Metrics>,
    registry: Option<Arc<Registry>>,
    stop: Option<tokio::sync::oneshot::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Bind `config.listen` (port 0 picks a free port) and serve on a new thread.
    pub fn spawn(config: ServerConfig) -> std::io::Result<RunningServer> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        install_crypto_provider();
        let listener = bind(&config.listen)?;
        let addr = listener.local_addr()?;
        let tls = config.tls.is_some();
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<Stop>();
        let m = metrics.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rtcroom-server".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(run_with(
                    config,
                    listener,
                    m,
                    async move { rx.await.unwrap_or(Stop::Graceful) },
                    move |registry| {
                        let _ = ready_tx.send(registry);
                    },
                ))
            })?;
        let mut server = RunningServer {
            addr,
            tls,
            metrics,
            registry: None,
            stop: Some(tx),
            thread: Some(thread),
        };
        // Up in milliseconds; if it failed instead, the thread's error says why.
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(registry) => server.registry = Some(registry),
            Err(_) => {
                server.stop_inner(Stop::Graceful)?;
                return Err(std::io::Error::other("the server did not start"));
            }
        }
        Ok(server)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The signalling URL (`ws://addr/ws`, or `wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// The HTTP base URL (`http://addr`, or `https://` with TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The server's room registry (for tests and tools in the same process).
    pub fn registry(&self) -> &Arc<Registry> {
        self.registry
            .as_ref()
            .expect("set by spawn before it returns the server")
    }

    /// Shut down and wait for the thread.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_inner(Stop::Graceful)
    }

    /// Stop as if the process were killed (`kill -9`): sockets close without close frames,
    /// and a cluster node leaves its registration and rooms to expire. For failover tests.
    #[doc(hidden)]
    pub fn kill(mut self) -> std::io::Result<()> {
        self.stop_inner(Stop::Abrupt)
    }

    fn stop_inner(&mut self, how: Stop) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(how);
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_inner(Stop::Graceful);
    }
}

/// Serve on `listener` on the current thread until SIGINT/SIGTERM (for `rtcroom serve`).
pub fn run_until_signal(config: ServerConfig, listener: TcpListener) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(run(
        config,
        listener,
        Arc::new(Metrics::default()),
        shutdown_signal(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Duration;

    /// Connections the kernel completes on `listener` without anyone accepting them (the
    /// accept queue holds backlog + 1), trying `n` with a short timeout each.
    fn queued(listener: &TcpListener, n: usize) -> usize {
        let addr = listener.local_addr().unwrap();
        let mut open = Vec::new();
        for _ in 0..n {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
                open.push(s);
            }
        }
        open.len()
    }

    #[test]
    fn the_listener_queues_a_burst_of_connections() {
        let ours = bind("127.0.0.1:0").unwrap();
        assert_eq!(
            queued(&ours, 300),
            300,
            "300 clients connecting at once all get in"
        );
        // std's default backlog (128) is what this replaces: the queue fills at 129.
        let std_default = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(queued(&std_default, 140) < 140);
    }
}
