//! Assembling a node: settings in, a running HTTP server and actor system out.
//!
//! [`Application::build`] starts the actor system on its own runtime, binds the HTTP
//! listener (port 0 picks a free one, which is how tests start nodes) and returns
//! before serving; [`Application::run`] serves until the shutdown future the caller
//! hands in resolves (`run_until_stopped` uses SIGINT / SIGTERM), then drains.

use crate::actors::{start_node, NodeContext, NodeHandle, SessionSupervisorMessage};
use crate::behaviour::Behaviours;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::transport::{serve, AppState};
use actix_web::dev::Server;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A built node, ready to serve.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    node: NodeHandle,
    state: AppState,
}

impl Application {
    /// Builds a node whose rooms all run plain chat. Must be called inside a tokio
    /// (actix) runtime.
    pub fn build(settings: Settings) -> std::io::Result<Self> {
        Self::build_with(settings, Behaviours::new())
    }

    /// Builds a node with room behaviours chosen by room-name pattern.
    pub fn build_with(settings: Settings, behaviours: Behaviours) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.node.http_addr)?;
        let addr = listener.local_addr()?;
        let cluster = settings.cluster.enabled.then(|| {
            Arc::new(Cluster::new(
                &settings.node.name,
                Duration::from_millis(settings.cluster.heartbeat_ms),
                Duration::from_millis(settings.cluster.failure_timeout_ms),
                cluster_size(&settings),
            ))
        });
        let ctx = Arc::new(NodeContext::new(settings, behaviours, cluster));
        let node = start_node(ctx.clone())?;
        let state = AppState::new(ctx);
        let server = serve(listener, state.clone())?;
        state.ready.store(true, Ordering::Release);
        tracing::info!(node = %state.ctx.settings.node.name, %addr, "hubbub is listening");
        Ok(Self {
            addr,
            server,
            node,
            state,
        })
    }

    /// The address the HTTP server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The shared state of the node's actors.
    pub fn context(&self) -> &Arc<NodeContext> {
        self.node.context()
    }

    /// Serves until SIGINT or SIGTERM, then drains (see [`Application::run`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503 and new
    /// upgrades are refused, every client gets `goodbye` and a close with 1012, and
    /// once they are gone (or [`DRAIN_TIMEOUT`] has passed) the HTTP server and the
    /// actor system stop. An actor system that gives up first ends the node with an
    /// error.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self {
            server,
            mut node,
            state,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            served = &mut server => {
                state.ready.store(false, Ordering::Release);
                served
            }
            _ = node.stopped() => {
                state.ready.store(false, Ordering::Release);
                // The stop command is carried out by the server future: keep polling it.
                let (_, _) = tokio::join!(handle.stop(false), &mut server);
                Err(std::io::Error::other("the actor system stopped"))
            }
            _ = shutdown => {
                drain(&state).await;
                let (_, served) = tokio::join!(handle.stop(true), &mut server);
                served
            }
        };
        node.stop();
        node.stopped().await;
        tracing::info!("hubbub stopped");
        result
    }
}

/// How many nodes the cluster has, as far as configuration tells: the distinct
/// addresses among the seeds and this node's own. Quorum is a majority of it (or of
/// the nodes seen, when more have been seen).
fn cluster_size(settings: &Settings) -> usize {
    let own = settings.cluster.advertise_addr();
    let mut addrs: std::collections::BTreeSet<&str> =
        settings.cluster.seeds.iter().map(String::as_str).collect();
    addrs.insert(own.as_str());
    addrs.len()
}

/// The longest a drain waits for clients to go before the node stops anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients told to reconnect are spread over this window.
const RECONNECT_SPREAD_MS: u64 = 2_000;

async fn drain(state: &AppState) {
    state.ready.store(false, Ordering::Release);
    let open = state.open_connections();
    tracing::info!(connections = open, "draining");
    if let Some(sessions) = state.ctx.sessions() {
        let _ = sessions.cast(SessionSupervisorMessage::Drain {
            reason: "shutdown".to_owned(),
            spread_ms: RECONNECT_SPREAD_MS,
        });
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while state.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.open_connections();
    if left > 0 {
        tracing::warn!(connections = left, "drain timed out; closing the rest");
    }
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
